"""PuLID injection math, as pure functions on plain tensors.

SDXL: in each text cross-attention the same queries also attend to the ID tokens (projected by
``id_to_k`` / ``id_to_v``, zero tokens appended as attention sinks); the result is added to the text
attention output ``h`` before ``to_out`` (official ``pulid/attention_processor.py``,
``IDAttnProcessor2_0``). FLUX: perceiver cross-attention modules add ``w * CA(id, img)`` to the image
tokens after every 2nd double block and every 4th single block (official ``flux/model.py``).

Shapes: ``h``, ``q``: [B, N, C] (N image tokens); ``k_id``, ``v_id``: [B, T, C] (T ID tokens + zeros).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .encoders import multi_head_attention

PROJECTIONS = ("none", "ortho", "ortho_v2")
ORTHO_V2_ID_TOKENS = 5  # ortho_v2 weighs the attention falling on the first 5 ID tokens


@dataclass(frozen=True)
class Preset:
    """An official app mode: projection and NUM_ZERO, and the app's default ID scale (only a default: the user's
    weight is always used)."""

    projection: str
    num_zero: int
    default_weight: float = 1.0


PRESETS = {
    "fidelity": Preset("ortho_v2", 8),  # official app.py mode "fidelity"
    "style": Preset("ortho", 16),  # official app.py mode "extremely style"
    "neutral": Preset("none", 0),
    "v1.1": Preset("ortho_v2", 20, 0.8),  # official app_v1_1.py defaults (id scale slider starts at 0.8)
}


def append_zero_tokens(tokens: torch.Tensor, num_zero: int) -> torch.Tensor:
    """ID tokens followed by ``num_zero`` zero tokens: with bias-free ``id_to_k/v`` they become zero keys and
    values, attention sinks that take weight away from the ID (official ``NUM_ZERO``)."""
    zeros = tokens.new_zeros(tokens.shape[0], num_zero, tokens.shape[-1])
    return torch.cat([tokens, zeros], dim=1)


def orthogonal_projection(h: torch.Tensor, id_out: torch.Tensor) -> torch.Tensor:
    """Per channel, the projection of ``id_out`` on ``h`` over the image tokens:
    ``(sum_n h*id / sum_n h*h) * h`` (official ``projection``, sums over dim -2)."""
    return (h * id_out).sum(dim=-2, keepdim=True) / (h * h).sum(dim=-2, keepdim=True) * h


def ortho_v2_weight(q: torch.Tensor, k_id: torch.Tensor, heads: int) -> torch.Tensor:
    """``a`` [B, N, 1]: softmax over ID tokens of the unscaled ``q k_id^T`` (as the official code has it),
    averaged over heads, summed over the first 5 ID tokens; one weight per query position."""
    q, k_id = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k_id))
    attention = (q @ k_id.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)
    return attention[..., :ORTHO_V2_ID_TOKENS].sum(dim=-1, keepdim=True)


def id_contribution(
    h: torch.Tensor,
    q: torch.Tensor,
    k_id: torch.Tensor,
    v_id: torch.Tensor,
    heads: int,
    projection: str = "ortho_v2",
    weight: float = 1.0,
) -> torch.Tensor:
    """The term PuLID adds to ``h``: ``s*id`` (none), ``s*(id - proj)`` (ortho) or ``s*(id + (a-1)*proj)``
    (ortho_v2), with ``id`` the attention of ``q`` over the ID keys/values. Both projections run in fp32."""
    id_out = multi_head_attention(q, k_id, v_id, heads)
    if projection == "none":
        return weight * id_out
    h32, id32 = h.float(), id_out.float()
    proj = orthogonal_projection(h32, id32)
    if projection == "ortho":
        term = id32 - proj
    elif projection == "ortho_v2":
        term = id32 + (ortho_v2_weight(q.float(), k_id.float(), heads) - 1) * proj
    else:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    return (weight * term).to(h.dtype)


def batch_for_chunks(cond: torch.Tensor, uncond: torch.Tensor, cond_or_uncond: list[int], batch: int) -> torch.Tensor:
    """A per-sample tensor for a batch made of ``len(cond_or_uncond)`` equal chunks (ComfyUI: 0 = cond,
    1 = uncond): each chunk takes ``cond`` or ``uncond``, of batch 1 (shared) or of the chunk's size."""
    per_chunk = batch // len(cond_or_uncond)
    chunks = []
    for kind in cond_or_uncond:
        x = (cond, uncond)[kind]
        if x.shape[0] not in (1, per_chunk):
            raise ValueError(
                f"got {x.shape[0]} per-sample entries for chunks of {per_chunk} samples: give 1 or {per_chunk}"
            )
        chunks.append(x.expand(per_chunk, *x.shape[1:]))
    return torch.cat(chunks)


def sdxl_token_grid(latent_hw: tuple[int, int], seq_len: int) -> tuple[int, int]:
    """(rows, cols) of a UNet attention layer's tokens: the latent downsampled by 1, 2 or 4 with ceil rounding
    (stride-2 convolutions with padding 1)."""
    h, w = latent_hw
    factor = round(math.sqrt(h * w / seq_len))
    grid = (math.ceil(h / factor), math.ceil(w / factor))
    if grid[0] * grid[1] != seq_len:
        raise ValueError(f"{seq_len} attention tokens do not tile a {h}x{w} latent")
    return grid


def flux_token_grid(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of FLUX image tokens: 2x2 latent patches, the latent padded to even size."""
    return (latent_hw[0] + 1) // 2, (latent_hw[1] + 1) // 2


def mask_to_tokens(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """An attention-area mask [M, H, W] (any resolution, values in [0, 1]) as per-token weights [M, rows*cols, 1]."""
    if mask.ndim == 2:
        mask = mask[None]
    resized = nn.functional.interpolate(mask[:, None].float(), size=grid, mode="bilinear", align_corners=False)
    return resized.flatten(1)[..., None]


def add_contributions(
    h: torch.Tensor, contributions: list[torch.Tensor], masks: list[torch.Tensor | None]
) -> torch.Tensor:
    """``h + sum_f m_f * delta_f``: each face's contribution weighted by its token mask (None = everywhere)."""
    for delta, mask in zip(contributions, masks, strict=True):
        h = h + (delta if mask is None else delta * mask.to(delta.dtype))
    return h


class PerceiverAttentionCA(nn.Module):
    """FLUX ID cross-attention: image tokens (queries, ``dim``) attend to ID tokens (``kv_dim``).
    Official ``pulid/encoders_flux.PerceiverAttentionCA``; keys ``pulid_ca.{i}.norm1|norm2|to_q|to_kv|to_out``."""

    def __init__(self, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: int = 2048):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(kv_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, id_tokens: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        k, v = self.to_kv(self.norm1(id_tokens)).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(self.to_q(self.norm2(img)), k, v, self.heads))


FLUX_DOUBLE_INTERVAL = 2
FLUX_SINGLE_INTERVAL = 4


def flux_injection_indices(num_double: int = 19, num_single: int = 38) -> list[tuple[str, int]]:
    """Where the FLUX CA modules act, in ``pulid_ca`` order: after double blocks 0, 2, ..., 18, then after
    single blocks 0, 4, ..., 36 (official ``flux/model.py``): 20 for FLUX.1."""
    return [("double_block", i) for i in range(0, num_double, FLUX_DOUBLE_INTERVAL)] + [
        ("single_block", i) for i in range(0, num_single, FLUX_SINGLE_INTERVAL)
    ]


def flux_contribution(
    ca: PerceiverAttentionCA, id_tokens: torch.Tensor, img: torch.Tensor, weight: float
) -> torch.Tensor:
    """``w * CA(id, img)``, the term added to the image tokens (official ``img + id_weight * pulid_ca[i](id, img)``)."""
    return weight * ca(id_tokens.to(img.dtype), img)
