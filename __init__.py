"""OneStep: one-step generation, PuLID identity and in-graph distillation for ComfyUI.

ComfyUI imports this file under the folder name the pack was cloned to. It stays light:
the node modules, which import ComfyUI, load only when ComfyUI asks for the extension.
"""


async def comfy_entrypoint():
    """Return the pack's ComfyExtension (ComfyUI's V3 entry point)."""
    from .nodes import OneStepExtension

    return OneStepExtension()
