"""PuLID weight files: layout detection and strict loading into modules named like the official ones.

Layouts (key prefixes):
- official SDXL ``pulid_v1.bin`` / ``pulid_v1.1.safetensors``: ``id_adapter.*`` +
  ``id_adapter_attn_layers.{i}.id_to_k|id_to_v`` (i = 1, 3, ..., 139: the odd entries of diffusers'
  ``unet.attn_processors``, i.e. the 70 cross-attentions);
- IP-Adapter layout (``ip-adapter_pulid_sdxl_fp16.safetensors``): ``image_proj.*`` + ``ip_adapter.{i}.to_k_ip|to_v_ip``;
- FLUX ``pulid_flux_v0.9.x.safetensors``: ``pulid_encoder.*`` + ``pulid_ca.{0..19}.*``.
v1 (``IDEncoder``) and v1.1 (``IDFormer``) are told apart by the number of encoder keys.
"""

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from .encoders import IDEncoder, IDFormer
from .injection import PerceiverAttentionCA, flux_injection_indices
from .tensor_files import read_tensors

ENCODERS = {"IDEncoder": IDEncoder, "IDFormer": IDFormer}

# SDXL cross-attention layers in diffusers order (down, up, mid) as ComfyUI attn2 patch slots
# (block, block id, transformer index) with their hidden size; slot n has official key index 2n+1.
SDXL_CROSS_ATTENTION_SLOTS = [
    (block, block_id, index, hidden)
    for block, block_id, depth, hidden in [
        ("input", 4, 2, 640),
        ("input", 5, 2, 640),
        ("input", 7, 10, 1280),
        ("input", 8, 10, 1280),
        ("output", 0, 10, 1280),
        ("output", 1, 10, 1280),
        ("output", 2, 10, 1280),
        ("output", 3, 2, 640),
        ("output", 4, 2, 640),
        ("output", 5, 2, 640),
        ("middle", 0, 10, 1280),
    ]
    for index in range(depth)
]


class PulidWeightsError(ValueError):
    """A PuLID weight file that cannot be used, with the reason and the fix."""


@dataclass(frozen=True)
class Layout:
    name: str  # "pulid_sdxl", "ip_adapter_sdxl" or "pulid_flux"
    base: str  # "sdxl" or "flux"
    encoder: str  # "IDEncoder" (v1) or "IDFormer" (v1.1, FLUX)

    @property
    def version(self) -> str:
        return "v1" if self.encoder == "IDEncoder" else "v1.1"


class IDProjection(nn.Module):
    """One cross-attention's ID key/value projections (official ``IDAttnProcessor`` parameters)."""

    def __init__(self, hidden: int, context_dim: int = 2048):
        super().__init__()
        self.id_to_k = nn.Linear(context_dim, hidden, bias=False)
        self.id_to_v = nn.Linear(context_dim, hidden, bias=False)


class PuLIDSDXL(nn.Module):
    """``id_adapter`` (the encoder) + ``id_adapter_attn_layers`` keyed "1", "3", ..., "139" as in the official files."""

    def __init__(self, encoder: nn.Module, hidden_sizes: list[int], context_dim: int = 2048):
        super().__init__()
        self.id_adapter = encoder
        self.id_adapter_attn_layers = nn.ModuleDict(
            {str(2 * n + 1): IDProjection(hidden, context_dim) for n, hidden in enumerate(hidden_sizes)}
        )

    def projection(self, slot: int) -> IDProjection:
        """The ID projections of cross-attention number ``slot`` (index into ``SDXL_CROSS_ATTENTION_SLOTS``)."""
        return self.id_adapter_attn_layers[str(2 * slot + 1)]


class PuLIDFlux(nn.Module):
    """``pulid_encoder`` (an ``IDFormer``) + ``pulid_ca``: one cross-attention per ``flux_injection_indices()``."""

    def __init__(self, encoder: nn.Module, cross_attentions: list[nn.Module]):
        super().__init__()
        self.pulid_encoder = encoder
        self.pulid_ca = nn.ModuleList(cross_attentions)


@cache
def encoder_key_count(encoder: str) -> int:
    """Number of state-dict entries of an official-size encoder (v1: 110, v1.1: 172)."""
    with torch.device("meta"):
        return len(ENCODERS[encoder]().state_dict())


def detect_layout(state_dict: dict[str, torch.Tensor]) -> Layout:
    """Which of the released layouts a state dict is in."""
    prefixes = {key.split(".", 1)[0] for key in state_dict}
    if {"pulid_encoder", "pulid_ca"} <= prefixes:
        return Layout("pulid_flux", "flux", "IDFormer")
    if {"id_adapter", "id_adapter_attn_layers"} <= prefixes:
        name, encoder_prefix = "pulid_sdxl", "id_adapter."
    elif {"image_proj", "ip_adapter"} <= prefixes:
        name, encoder_prefix = "ip_adapter_sdxl", "image_proj."
    else:
        raise PulidWeightsError(
            f"not a PuLID weight file: top-level keys {sorted(prefixes)[:6]}; expected id_adapter.* (pulid_v1.bin, "
            "pulid_v1.1.safetensors), image_proj.* + ip_adapter.* (ip-adapter_pulid_sdxl_fp16.safetensors) "
            "or pulid_encoder.* + pulid_ca.* (pulid_flux_v0.9.x.safetensors)"
        )
    count = sum(key.startswith(encoder_prefix) for key in state_dict)
    by_count = {encoder_key_count(encoder): encoder for encoder in ENCODERS}
    if count not in by_count:
        raise PulidWeightsError(
            f"{count} encoder keys under {encoder_prefix}*: neither PuLID v1 ({encoder_key_count('IDEncoder')}) "
            f"nor v1.1 ({encoder_key_count('IDFormer')})"
        )
    return Layout(name, "sdxl", by_count[count])


def expect_base(layout: Layout, base: str) -> None:
    """Raise a clear error when weights for one base model (sdxl / flux) are used on the other."""
    if layout.base != base:
        fix = {"sdxl": "pulid_v1.1.safetensors or pulid_v1.bin", "flux": "pulid_flux_v0.9.x.safetensors"}[base]
        raise PulidWeightsError(
            f"these are PuLID {layout.base.upper()} weights ({layout.name}) but the model is {base.upper()}: "
            f"load {fix} for a {base.upper()} model"
        )


def official_keys(state_dict: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """The state dict renamed to the official SDXL key names (IP-Adapter layout) or unchanged."""
    if layout.name != "ip_adapter_sdxl":
        return state_dict

    def rename(key: str) -> str:
        if key.startswith("image_proj."):
            return "id_adapter." + key.removeprefix("image_proj.")
        index, rest = key.removeprefix("ip_adapter.").split(".", 1)
        return f"id_adapter_attn_layers.{index}." + rest.replace("to_k_ip", "id_to_k").replace("to_v_ip", "id_to_v")

    return {rename(key): value for key, value in state_dict.items()}


def official_model(layout: Layout, sdxl_widths: list[int] | None = None) -> nn.Module:
    """The official-size module for a layout, built on the meta device (loading assigns the file's tensors);
    ``sdxl_widths``: the SDXL ID projections' widths instead of SDXL's 640 / 1280."""
    with torch.device("meta"):
        encoder = ENCODERS[layout.encoder]()
        if layout.base == "flux":
            return PuLIDFlux(encoder, [PerceiverAttentionCA() for _ in flux_injection_indices()])
        return PuLIDSDXL(encoder, sdxl_widths or [hidden for *_, hidden in SDXL_CROSS_ATTENTION_SLOTS])


def sdxl_projection_widths(state_dict: dict[str, torch.Tensor]) -> list[int]:
    """The width of each SDXL slot's ID projections as the file has them (SDXL's where a key is missing, which
    strict loading then names). Apply PuLID checks them against the model's cross-attentions, so a file made for
    an SDXL-structured network of other widths loads and one that does not fit the model is refused there."""
    widths = []
    for slot, (*_, official) in enumerate(SDXL_CROSS_ATTENTION_SLOTS):
        key = state_dict.get(f"id_adapter_attn_layers.{2 * slot + 1}.id_to_k.weight")
        widths.append(key.shape[0] if isinstance(key, torch.Tensor) and key.dim() == 2 else official)
    return widths


def load_pulid(path: str | Path, model: nn.Module | None = None) -> tuple[Layout, nn.Module]:
    """Read a PuLID file in any released layout into ``model`` (default: the official-size module) with
    strict key and shape matching. Returns the layout and the module, holding the file's dtype."""
    state_dict = read_tensors(path, "PuLID weights")
    layout = detect_layout(state_dict)
    state_dict = official_keys(state_dict, layout)
    if model is None:
        model = official_model(layout, sdxl_projection_widths(state_dict) if layout.base == "sdxl" else None)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise PulidWeightsError(
            f"{Path(path).name} is laid out as {layout.name} {layout.version} but {error}"
        ) from error
    return layout, model.eval()


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` with its floating-point parameters and buffers in ``dtype``, made tensor by tensor (no
    second full-precision copy), for running the official fp32 modules in a model's bf16/fp16 (as the official
    FLUX pipeline does: ``pulid_ca`` in the FLUX model's dtype)."""
    tensors = [*module.parameters(), *module.buffers()]
    memo = {}
    for tensor in tensors:
        cast = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
        memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(module, memo)
