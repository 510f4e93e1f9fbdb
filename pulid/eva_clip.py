"""EVA02-CLIP-L-14-336 visual tower (timm's ``eva02_large_patch14_clip_336``) as PuLID uses it.

PuLID feeds the hidden states entering blocks 4, 8, 12, 16 and 20 (0-based; official
``eva_clip/eva_vit_model.py``: ``0 < idx <= 20 and idx % 4 == 0``) to the ID encoder and concatenates
the L2-normalised 768-d projected CLS to the ArcFace embedding (official ``pipeline*.py``).
Weights: the official ``EVA02_CLIP_L_336_psz14_s6B.pt`` (whole CLIP, ``visual.*`` taken) or a
safetensors of its ``visual.*`` tensors; timm's ``eva.checkpoint_filter_fn`` maps the names.
"""

from pathlib import Path

import timm
import torch
from timm.models.eva import checkpoint_filter_fn
from torch import nn

from .tensor_files import read_tensors

TIMM_NAME = "eva02_large_patch14_clip_336"
EMBED_DIM = 768
HIDDEN_BLOCKS = (4, 8, 12, 16, 20)


class EvaClipFileError(ValueError):
    """A file that is not the EVA02-CLIP-L-14-336 visual tower."""


def build_eva02_clip_l14_336(**overrides) -> nn.Module:
    """The visual tower without weights (``overrides`` change timm arguments, e.g. a smaller test model)."""
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=EMBED_DIM, **overrides).eval()


def load_eva02_clip_l14_336(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load the visual tower's weights into ``model`` (default: a new full-size tower), shapes checked first."""
    path = Path(path)
    checkpoint = read_tensors(path, "EVA-CLIP weights")
    for wrapper in ("state_dict", "module"):  # as EVA-CLIP's own loader unwraps
        checkpoint = checkpoint.get(wrapper, checkpoint)
    model = build_eva02_clip_l14_336() if model is None else model
    prefix = "visual." if "visual.pos_embed" in checkpoint else ""
    expected_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    # checked before timm's filter, which would silently resample another resolution's pos_embed / patch size
    for name in ("pos_embed", "patch_embed.proj.weight", "head.weight"):
        found, expected = checkpoint.get(prefix + name), expected_shapes[name]
        if found is None or found.shape != expected:
            shape = "missing" if found is None else f"shape {list(found.shape)}"
            raise EvaClipFileError(
                f"{path.name} is not the EVA02-CLIP-L-14-336 visual tower: {prefix + name} is {shape}, "
                f"expected {list(expected)} (use EVA02_CLIP_L_336_psz14_s6B.pt)"
            )
    try:
        model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
    except RuntimeError as error:
        raise EvaClipFileError(f"{path.name} is not the EVA02-CLIP-L-14-336 visual tower: {error}") from error
    return model.eval()


def eva_clip_features(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(L2-normalised projected CLS [B, 768], hidden states entering blocks 4..20: 5 x [B, 577, 1024]) of
    CLIP-normalised 336x336 images."""
    entering = [index - 1 for index in HIDDEN_BLOCKS]  # the input of block i is the output of block i-1
    final, intermediates = model.forward_intermediates(
        pixels, indices=entering, return_prefix_tokens=True, output_fmt="NLC"
    )
    hidden = [torch.cat([prefix, patches], dim=1) for patches, prefix in intermediates]
    cls = model.forward_head(final)
    return nn.functional.normalize(cls, dim=-1), hidden
