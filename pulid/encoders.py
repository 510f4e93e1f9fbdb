"""PuLID ID encoders: ``id_cond`` (ArcFace + EVA-CLIP CLS) and EVA-CLIP hidden states -> ID tokens.

Guo et al. 2024, "PuLID: Pure and Lightning ID Customization via Contrastive Alignment"
(arXiv 2404.16022). Module and parameter names follow the official ToTheBeginning/PuLID files
(``pulid/encoders.py`` for v1, ``pulid/encoders_transformer.py`` for v1.1 and FLUX) so that the
released weights load with ``strict=True``.
"""

import torch
import torch.nn.functional as F
from torch import nn

ID_COND_DIM = 1280  # 512-d ArcFace embedding + 768-d EVA-CLIP CLS
VIT_WIDTH = 1024  # EVA02-CLIP-L hidden width; the official encoders hard-code it
NUM_VIT_LEVELS = 5  # hidden states entering EVA blocks 4, 8, 12, 16, 20


def mapping_mlp(in_dim: int, out_dim: int, hidden1: int, hidden2: int | None = None) -> nn.Sequential:
    """Linear-LN-LeakyReLU twice, then Linear: every ``body`` / ``mapping_*`` MLP of the official encoders."""
    hidden2 = hidden2 or hidden1
    return nn.Sequential(
        nn.Linear(in_dim, hidden1),
        nn.LayerNorm(hidden1),
        nn.LeakyReLU(),
        nn.Linear(hidden1, hidden2),
        nn.LayerNorm(hidden2),
        nn.LeakyReLU(),
        nn.Linear(hidden2, out_dim),
    )


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head on [B, N, heads*d] tensors (official ``PerceiverAttention`` math)."""
    b, n, _ = q.shape
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, -1)


class IDEncoder(nn.Module):
    """PuLID v1 MLP encoder: 5 tokens from ``id_cond`` + one token per ViT level = 10 tokens x 2048."""

    def __init__(
        self, width: int = ID_COND_DIM, context_dim: int = 2048, num_token: int = 5, vit_width: int = VIT_WIDTH
    ):
        super().__init__()
        self.num_token = num_token
        self.context_dim = context_dim
        out = context_dim * num_token
        self.body = mapping_mlp(width, out, min(out // 4, vit_width), min(out // 2, vit_width))
        for i in range(NUM_VIT_LEVELS):
            setattr(self, f"mapping_{i}", mapping_mlp(vit_width, context_dim, vit_width))
            setattr(self, f"mapping_patch_{i}", mapping_mlp(vit_width, context_dim, vit_width))

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        id_tokens = self.body(id_cond).reshape(-1, self.num_token, self.context_dim)
        level_tokens = [
            getattr(self, f"mapping_{i}")(h[:, :1])
            + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(1, keepdim=True)
            for i, h in enumerate(vit_hidden)
        ]
        return torch.cat([id_tokens, *level_tokens], dim=1)


class PerceiverAttention(nn.Module):
    """Latents attend to ``cat(context, latents)`` (official ``encoders_transformer.PerceiverAttention``)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm1(context), self.norm2(latents)
        k, v = self.to_kv(torch.cat([context, latents], dim=1)).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(self.to_q(latents), k, v, self.heads))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LN-Linear-GELU-Linear without biases (official ``FeedForward``)."""
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class IDFormer(nn.Module):
    """PuLID v1.1 / FLUX perceiver encoder: 32 query tokens x 2048.

    The 5 ID tokens from ``id_cond`` join the latents; ViT level i (mapped to ``dim``) together with
    the ID tokens is the context of perceiver layers 2i and 2i+1.
    """

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 10,
        dim_head: int = 64,
        heads: int = 16,
        num_id_token: int = 5,
        num_queries: int = 32,
        output_dim: int = 2048,
        ff_mult: int = 4,
        id_dim: int = ID_COND_DIM,
        vit_width: int = VIT_WIDTH,
    ):
        super().__init__()
        self.dim = dim
        self.num_id_token = num_id_token
        self.num_queries = num_queries
        self.layers_per_level = depth // NUM_VIT_LEVELS
        scale = dim**-0.5
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(dim, output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        for i in range(NUM_VIT_LEVELS):
            setattr(self, f"mapping_{i}", mapping_mlp(vit_width, dim, vit_width))
        self.id_embedding_mapping = mapping_mlp(id_dim, dim * num_id_token, vit_width)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        """``id_cond`` [B, 1280], or [B, R, 1280] for R references encoded jointly (official v1.1 pipeline,
        whose ``vit_hidden`` then holds the R references' tokens concatenated along the sequence)."""
        refs = id_cond.shape[1] if id_cond.ndim == 3 else 1
        id_tokens = self.id_embedding_mapping(id_cond).reshape(-1, self.num_id_token * refs, self.dim)
        latents = torch.cat([self.latents.expand(id_tokens.shape[0], -1, -1), id_tokens], dim=1)
        for level, hidden in enumerate(vit_hidden):
            context = torch.cat([id_tokens, getattr(self, f"mapping_{level}")(hidden)], dim=1)
            for attn, ff in self.layers[level * self.layers_per_level : (level + 1) * self.layers_per_level]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.num_queries] @ self.proj_out
