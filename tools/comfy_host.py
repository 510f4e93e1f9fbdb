"""Import the real ComfyUI installed by `make` (in .comfyui/) in-process, on the CPU, and build small models."""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("ONESTEP_COMFYUI_DIR", REPO_ROOT / ".comfyui"))


def import_comfy(cpu: bool = True) -> None:
    """Put ComfyUI on sys.path and (by default) force the CPU before any comfy module reads its arguments."""
    if not (COMFYUI_DIR / "comfy").is_dir():
        raise RuntimeError(f"No ComfyUI at {COMFYUI_DIR}: run `make test` (it installs the host) first.")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu once, at import)


TINY_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 32,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "num_heads": 2,
    "num_head_channels": -1,
}


def tiny_model_patcher(config_class, unet_config=None, seed: int = 0):
    """A small random-weight model of a ComfyUI family (SD15 by default) wrapped in a ModelPatcher.

    ComfyUI cannot detect a shrunken UNet from its weights, so the model is built from the family's
    supported-model class directly, exactly as ComfyUI's loader would after detection.
    """
    import comfy.model_management
    import comfy.model_patcher
    import torch

    torch.manual_seed(seed)
    model_config = config_class(dict(unet_config or TINY_UNET_CONFIG))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    model.diffusion_model.float()
    with torch.no_grad():  # ComfyUI's layers skip initialisation: give every weight a finite value
        for parameter in model.diffusion_model.parameters():
            parameter.normal_(0.0, 0.05)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
