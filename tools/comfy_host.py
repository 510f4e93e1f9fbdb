"""Import the real ComfyUI installed by `make` (in .comfyui/) in-process, on the CPU, and build small models."""

import contextlib
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("ONESTEP_COMFYUI_DIR") or REPO_ROOT / ".comfyui").expanduser().resolve()


@contextlib.contextmanager
def comfy_folder(kind: str, path):
    """ComfyUI's ``input`` or ``output`` folder set to ``path`` while the block runs, then restored."""
    import folder_paths

    get_folder, set_folder = (getattr(folder_paths, f"{verb}_{kind}_directory") for verb in ("get", "set"))
    previous = get_folder()
    set_folder(str(path))
    try:
        yield path
    finally:
        set_folder(previous)


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


# SDXL's UNet as ComfyUI detects it (base 1.0): 70 text cross-attentions in input 4, 5, 7, 8, middle, output 0-5
SDXL_UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10, "context_dim": 2048, "use_linear_in_transformer": True,
    "use_spatial_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
    "use_temporal_attention": False, "use_temporal_resblock": False, "num_heads": -1, "num_head_channels": 64,
}


TINY_POOLED_DIM = 16
SDXL_SIZE_EMBEDDING_DIM = 6 * 256  # SDXL.encode_adm: six Timestep(256) embeddings (sizes, crop, target size)
TINY_SDXL_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "use_linear_in_transformer": True,
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
    "adm_in_channels": TINY_POOLED_DIM + SDXL_SIZE_EMBEDDING_DIM,
    "num_classes": "sequential",
}
TINY_CLIP_TEXT_CONFIG = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3,
                         "projection_dim": TINY_POOLED_DIM, "vocab_size": 49408, "max_position_embeddings": 77,
                         "hidden_act": "gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 49407,
                         "pad_token_id": 1}


# Key shapes of FLUX.1-dev that ComfyUI's detection reads (its blocks are counted from the key names)
FLUX1_DEV_KEY_SHAPES = {
    "img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096), "vector_in.in_layer.weight": (3072, 768),
    "guidance_in.in_layer.weight": (3072, 256),
    **{f"double_blocks.{i}.img_attn.norm.key_norm.scale": (128,) for i in range(19)},
    **{f"single_blocks.{i}.norm.key_norm.scale": (128,) for i in range(38)},
}


def flux1_config(**sizes) -> dict:
    """FLUX.1's model config as this host's own detection writes it (with every field the host's ``FluxParams``
    needs: 0.28 added ``txt_ids_dims``), with ``sizes`` (hidden_size, depth, ...) replaced for a small test model."""
    import comfy.model_detection
    import torch

    shapes = {key: torch.empty(shape, device="meta") for key, shape in FLUX1_DEV_KEY_SHAPES.items()}
    detected = comfy.model_detection.detect_unet_config(shapes, "")
    unknown = set(sizes) - set(detected)
    if unknown:
        raise KeyError(f"this host's FLUX detection has no {sorted(unknown)}")
    return {**detected, **sizes}


def tiny_model_patcher(config_class, unet_config=None, seed: int = 0, dtype=None):
    """A small random-weight model of a ComfyUI family (SD15 by default) wrapped in a ModelPatcher, in ``dtype``
    (fp32 by default).

    ComfyUI cannot detect a shrunken UNet from its weights, so the model is built from the family's
    supported-model class directly, exactly as ComfyUI's loader would after detection.
    """
    import comfy.model_management
    import comfy.model_patcher
    import torch

    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    model_config = config_class(dict(unet_config or TINY_UNET_CONFIG))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    model.diffusion_model.to(dtype)
    with torch.no_grad():  # ComfyUI's layers skip initialisation: give every weight a finite value
        for parameter in model.diffusion_model.parameters():
            parameter.normal_(0.0, 0.05)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_sdxl_clip(seed: int = 0):
    """A CLIP with SDXL's two text towers (clip_l and clip_g, real tokenizers) shrunk to 16-d, random weights.

    Its token embeddings are 32-d (16 + 16, as SDXL concatenates its towers) and its pooled output 16-d.
    """
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import torch

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 (ComfyUI's signature)
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                     layer_norm_hidden_state=False, model_options=model_options,
                                                     textmodel_json_config=TINY_CLIP_TEXT_CONFIG)
            self.clip_g = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                     textmodel_json_config=TINY_CLIP_TEXT_CONFIG,
                                                     special_tokens={"start": 49406, "end": 49407, "pad": 0},
                                                     layer_norm_hidden_state=False, return_projected_pooled=True,
                                                     model_options={**model_options, "model_name": "clip_g"})
            self.dtypes = {dtype}

    class Target:
        params = {}
        clip = TinySDXLClipModel
        tokenizer = comfy.sdxl_clip.SDXLTokenizer

    torch.manual_seed(seed)
    clip = comfy.sd.CLIP(target=Target, model_options={"dtype": torch.float32})
    with torch.no_grad():
        for parameter in clip.cond_stage_model.parameters():
            parameter.normal_(0.0, 0.05)
    return clip
