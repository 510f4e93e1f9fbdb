"""Full-size SD1.5 files with random weights, so that ComfyUI's real loaders and detection run offline.

Files are written once into a cache folder and reused: they are deterministic (fixed seeds).
"""

import os
from pathlib import Path

import torch
from comfy_host import SDXL_UNET_CONFIG
from safetensors.torch import save_file

SD15_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "num_heads": 8,
    "num_head_channels": -1,
}
SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}
FILES_VERSION = 2  # bump when the generated weights change, so cached files are rebuilt
UNET_FILE = f"random_sd15_unet_v{FILES_VERSION}.safetensors"
STUDENT_METADATA = {"onestep.preset": '"sid-lsg"', "onestep.teacher": '"random SD1.5 (stand-in)"'}
"""What the random student file says about itself, as OneStep Load Student reads it."""
CHECKPOINT_FILE = f"random_sd15_v{FILES_VERSION}.safetensors"


def _half(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    """ComfyUI's layers skip weight initialisation: give every parameter a finite random value."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02)
    return module


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def random_sd15_unet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-layout SD1.5 UNet weights (keys as in a checkpoint's model.diffusion_model.*, prefix removed)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = _randomize(UNetModel(**SD15_UNET_CONFIG, operations=comfy.ops.disable_weight_init))
    return _half(unet.state_dict())


def random_sd_vae_state_dict(seed: int = 2) -> dict[str, torch.Tensor]:
    """The SD KL-f8 VAE (SD1.x/2.x) with random weights, in ComfyUI's layout."""
    import comfy.ldm.models.autoencoder

    torch.manual_seed(seed)
    vae = _randomize(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4))
    return _half(vae.state_dict())


def random_sd15_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """UNet + CLIP-L text encoder + VAE in the original SD1.5 checkpoint layout."""
    import comfy.sd1_clip

    tensors = {f"model.diffusion_model.{k}": v for k, v in random_sd15_unet_state_dict(seed).items()}
    torch.manual_seed(seed + 1)
    clip = _randomize(comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32))
    clip_sd = {k: v for k, v in clip.state_dict().items() if k.startswith("transformer.")}
    tensors.update(_half(clip_sd, "cond_stage_model."))
    tensors.update({f"first_stage_model.{k}": v for k, v in random_sd_vae_state_dict(seed + 2).items()})
    return tensors


def ensure_random_sd15_files(cache_dir: Path) -> dict[str, Path]:
    """Write (once) a random SD1.5 checkpoint and a random SD1.5 UNet ("student") into ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": cache_dir / CHECKPOINT_FILE, "unet": cache_dir / UNET_FILE}
    if not paths["checkpoint"].exists():
        _save(paths["checkpoint"], random_sd15_checkpoint_state_dict())
    if not paths["unet"].exists():
        _save(paths["unet"], random_sd15_unet_state_dict(seed=3), STUDENT_METADATA)
    return paths


PULID_FILE = f"random_pulid_v1.1_sdxl_v{FILES_VERSION}.safetensors"
EVA_CLIP_FILE = f"random_eva02_clip_l14_336_v{FILES_VERSION}.pt"
FACE_PARSING_FILE = f"random_parsing_bisenet_v{FILES_VERSION}.pth"


def random_pulid_v11_state_dict(seed: int = 4, widths: dict[int, int] | None = None) -> dict[str, torch.Tensor]:
    """PuLID v1.1 for SDXL at the official size, in the official key layout (``id_adapter.*`` +
    ``id_adapter_attn_layers.{1..139}.id_to_k|v``), random weights; ``widths`` maps SDXL's cross-attention widths
    (640, 1280) to those of another SDXL-structured network."""
    from onestep.pulid.encoders import IDFormer
    from onestep.pulid.weights import SDXL_CROSS_ATTENTION_SLOTS, PuLIDSDXL

    torch.manual_seed(seed)
    hidden_sizes = [(widths or {}).get(hidden, hidden) for *_, hidden in SDXL_CROSS_ATTENTION_SLOTS]
    return _half(_randomize(PuLIDSDXL(IDFormer(), hidden_sizes)).state_dict())


def random_eva_clip_state_dict(seed: int = 5) -> dict[str, torch.Tensor]:
    """The EVA02-CLIP-L-14-336 visual tower at full size, random weights, in timm's names (which the loader
    takes as well as the official ``visual.*`` ones)."""
    from onestep.pulid.eva_clip import build_eva02_clip_l14_336

    torch.manual_seed(seed)
    return _half(_randomize(build_eva02_clip_l14_336()).state_dict())


def random_bisenet_state_dict(seed: int = 6) -> dict[str, torch.Tensor]:
    """facexlib's BiSeNet face parser (``parsing_bisenet.pth``: 19 classes, its key names), random weights."""
    from onestep.pulid.face_parsing import BiSeNet

    torch.manual_seed(seed)
    return _half(_randomize(BiSeNet(19)).state_dict())


def _torch_save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(tensors, temporary)
    os.replace(temporary, path)


def ensure_random_pulid_files(cache_dir: Path) -> dict[str, Path]:
    """Write (once) official-size PuLID v1.1 (safetensors), EVA-CLIP and facexlib's BiSeNet face parser (weights-only
    torch files) with random weights into ``cache_dir``: the real loaders, layout detection and shape checks run on
    them."""
    from pack_loader import load_pack

    load_pack()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {"pulid": cache_dir / PULID_FILE, "eva_clip": cache_dir / EVA_CLIP_FILE,
             "face_parsing": cache_dir / FACE_PARSING_FILE}
    if not paths["pulid"].exists():
        _save(paths["pulid"], random_pulid_v11_state_dict())
    if not paths["eva_clip"].exists():
        _torch_save(paths["eva_clip"], random_eva_clip_state_dict())
    if not paths["face_parsing"].exists():
        _torch_save(paths["face_parsing"], random_bisenet_state_dict())
    return paths


# SDXL's UNet as ComfyUI detects it (70 text cross-attentions over 2048-d text, the 2816-d size/pooled embedding, 64-d
# heads, 2 res blocks per level) with every level 320 channels wide instead of 320 / 640 / 1280: ComfyUI detects and
# samples it as SDXL, at ~0.3B parameters instead of 2.6B (2.6B in float32 is 10 GB of RAM on a CPU server).
SDXL_STRUCTURE_UNET_CONFIG = {**SDXL_UNET_CONFIG, "channel_mult": [1, 1, 1]}
SDXL_CHECKPOINT_FILE = f"random_sdxl_structure_v{FILES_VERSION}.safetensors"
DMD2_STUDENT_FILE = f"random_dmd2_sdxl_1step_unet_v{FILES_VERSION}.safetensors"
PULID_SDXL_STRUCTURE_FILE = f"random_pulid_v1.1_sdxl_structure_v{FILES_VERSION}.safetensors"


def sdxl_structure_widths() -> dict[int, int]:
    """SDXL's cross-attention widths (levels 1 and 2: 640, 1280) -> the SDXL-structured network's."""
    channels, mult = SDXL_STRUCTURE_UNET_CONFIG["model_channels"], SDXL_STRUCTURE_UNET_CONFIG["channel_mult"]
    return {640: channels * mult[1], 1280: channels * mult[2]}


def random_unet_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """A UNet of ``config`` (ComfyUI's UNetModel arguments) with random weights, in ComfyUI's layout, float16."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    return _half(_randomize(UNetModel(**config, operations=comfy.ops.disable_weight_init)).state_dict())


def random_sdxl_structure_unet_state_dict(seed: int = 6) -> dict[str, torch.Tensor]:
    """An SDXL-structured UNet (SDXL_STRUCTURE_UNET_CONFIG) with random weights, in ComfyUI's layout."""
    return random_unet_state_dict(SDXL_STRUCTURE_UNET_CONFIG, seed)


def write_random_sdxl_checkpoint(path: Path, seed: int = 7) -> None:
    """An SDXL checkpoint in the original layout, saved by ComfyUI itself: the SDXL-structured UNet, SDXL's two text
    encoders at full size and the KL-f8 VAE, all random."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(random_sdxl_structure_unet_state_dict(seed))
    target = model.model.model_config.clip_target()
    torch.manual_seed(seed + 1)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float16})
    _randomize(clip.cond_stage_model)
    vae = comfy.sd.VAE(sd=random_sd_vae_state_dict(seed + 2))
    temporary = path.with_suffix(".tmp")
    comfy.sd.save_checkpoint(str(temporary), model, clip, vae)
    os.replace(temporary, path)


def ensure_random_sdxl_files(cache_dir: Path) -> dict[str, Path]:
    """Write (once) a random SDXL-structured checkpoint, a random SDXL-structured UNet named as DMD2's 1-step
    student, and PuLID v1.1 with its ID projections as wide as that network's cross-attentions, into ``cache_dir``
    (~4.2 GB together)."""
    from pack_loader import load_pack

    load_pack()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": cache_dir / SDXL_CHECKPOINT_FILE, "dmd2": cache_dir / DMD2_STUDENT_FILE,
             "pulid": cache_dir / PULID_SDXL_STRUCTURE_FILE}
    if not paths["checkpoint"].exists():
        write_random_sdxl_checkpoint(paths["checkpoint"])
    if not paths["dmd2"].exists():
        _save(paths["dmd2"], random_sdxl_structure_unet_state_dict(seed=9))
    if not paths["pulid"].exists():
        _save(paths["pulid"], random_pulid_v11_state_dict(seed=10, widths=sdxl_structure_widths()))
    return paths
