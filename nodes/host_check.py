"""What the pack needs of its ComfyUI host, checked once at import, so an unsuitable host fails with one message
naming its version and the missing piece instead of with a traceback from inside a node later.

Tested hosts: ComfyUI 0.3.75 (the oldest supported) and 0.28.0.
"""

import importlib

MINIMUM_VERSION = "0.3.75"

# module -> the names the pack uses from it (attributes of a class as "Class.attribute")
REQUIRED = {
    "comfy_api.latest": ["ComfyExtension", "io"],
    "comfy_api.latest._io": ["ComfyNode", "Schema", "NodeOutput", "Custom", "Combo", "Int", "Float", "String",
                             "Boolean", "Model", "Image", "Latent", "Conditioning", "Clip", "Vae", "Mask", "Sigmas",
                             "Sampler"],
    "comfy.model_patcher": ["ModelPatcher.clone", "ModelPatcher.set_model_attn2_replace",
                            "ModelPatcher.set_model_patch_replace", "ModelPatcher.set_additional_models"],
    "comfy.model_base": ["BaseModel.apply_model", "ModelType"],
    "comfy.model_management": ["load_models_gpu", "throw_exception_if_processing_interrupted", "processing_interrupted",
                               "InterruptProcessingException", "get_torch_device", "intermediate_device",
                               "unet_offload_device", "soft_empty_cache"],
    "comfy.model_sampling": ["ModelSamplingDiscrete", "ModelSamplingDiscreteEDM", "ModelSamplingContinuousEDM", "EPS"],
    "comfy.samplers": ["KSAMPLER", "KSampler"],
    "comfy.sample": ["sample", "sample_custom", "prepare_noise"],
    "comfy.sd": ["load_diffusion_model_state_dict"],
    "comfy.utils": ["ProgressBar", "load_torch_file"],
    "comfy.ldm.modules.attention": ["optimized_attention", "SpatialTransformer"],
    "comfy.supported_models_base": ["BASE"],
    "latent_preview": ["prepare_callback", "get_previewer"],
    "folder_paths": ["get_filename_list", "get_full_path", "get_folder_paths", "add_model_folder_path",
                     "get_input_directory", "get_output_directory", "get_save_image_path", "models_dir"],
}


class UnsupportedHostError(ImportError):
    """This ComfyUI lacks something the pack needs."""


def host_version() -> str:
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown (no comfyui_version.py)"


def missing_pieces(required: dict[str, list[str]] = REQUIRED) -> list[str]:
    """The required modules and names this host does not have, as 'module.name'."""
    missing = []
    for module_name, names in required.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        for dotted in names:
            target = module
            for part in dotted.split("."):
                target = getattr(target, part, None)
            if target is None:
                missing.append(f"{module_name}.{dotted}")
    return missing


def check_host() -> None:
    """Raise UnsupportedHostError naming the host's version and every missing piece, if any."""
    missing = missing_pieces()
    if missing:
        raise UnsupportedHostError(
            f"OneStep needs ComfyUI {MINIMUM_VERSION} or newer with its V3 node API; this ComfyUI "
            f"({host_version()}) lacks: {', '.join(missing)}. Update ComfyUI, or report the version at the "
            "pack's repository if it is newer than the tested 0.28.0.")
