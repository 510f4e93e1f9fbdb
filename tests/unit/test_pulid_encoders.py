"""The ID encoders against the official forward passes written out step by step (small widths)."""

import math

import pytest
import torch
from onestep.pulid.encoders import IDEncoder, IDFormer
from onestep.pulid.injection import PerceiverAttentionCA


def official_perceiver_attention(attn, heads, context, latents):
    """encoders_transformer.PerceiverAttention.forward: latents attend to cat(context, latents), q, k scaled d^-1/4."""
    context, latents = attn.norm1(context), attn.norm2(latents)
    q = attn.to_q(latents)
    k, v = attn.to_kv(torch.cat((context, latents), dim=-2)).chunk(2, dim=-1)
    q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.softmax((q * scale) @ (k * scale).transpose(-2, -1), dim=-1)
    out = (weight @ v).permute(0, 2, 1, 3).reshape(latents.shape[0], latents.shape[1], -1)
    return attn.to_out(out)


def official_idformer(encoder, heads, x, y):
    """encoders_transformer.IDFormer.forward, one reference."""
    latents = encoder.latents.repeat(x.size(0), 1, 1)
    x = encoder.id_embedding_mapping(x).reshape(-1, encoder.num_id_token, encoder.dim)
    latents = torch.cat((latents, x), dim=1)
    for i in range(5):
        context = torch.cat((x, getattr(encoder, f"mapping_{i}")(y[i])), dim=1)
        for attn, ff in encoder.layers[i * 2 : (i + 1) * 2]:
            latents = official_perceiver_attention(attn, heads, context, latents) + latents
            latents = ff(latents) + latents
    return latents[:, : encoder.num_queries] @ encoder.proj_out


def official_idencoder(encoder, x, y):
    """encoders.IDEncoder.forward."""
    x = encoder.body(x).reshape(-1, encoder.num_token, encoder.context_dim)
    levels = [
        getattr(encoder, f"mapping_{i}")(e[:, :1]) + getattr(encoder, f"mapping_patch_{i}")(e[:, 1:]).mean(1, True)
        for i, e in enumerate(y)
    ]
    return torch.cat([x, torch.cat(levels, dim=1)], dim=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 12, generator=g), [torch.randn(2, 9, 6, generator=g) for _ in range(5)]


def test_idformer_matches_the_official_forward(inputs):
    torch.manual_seed(0)
    encoder = IDFormer(dim=8, dim_head=4, heads=2, output_dim=16, id_dim=12, vit_width=6)
    tokens = encoder(*inputs)
    assert tokens.shape == (2, 32, 16)
    torch.testing.assert_close(tokens, official_idformer(encoder, 2, *inputs))


def test_idencoder_matches_the_official_forward(inputs):
    torch.manual_seed(0)
    encoder = IDEncoder(width=12, context_dim=8, vit_width=6)
    tokens = encoder(*inputs)
    assert tokens.shape == (2, 10, 8)
    torch.testing.assert_close(tokens, official_idencoder(encoder, *inputs))


def test_official_size_token_shapes():
    with torch.device("meta"):
        id_cond, hidden = torch.empty(2, 1280), [torch.empty(2, 577, 1024)] * 5
        assert IDEncoder()(id_cond, hidden).shape == (2, 10, 2048)
        assert IDFormer()(id_cond, hidden).shape == (2, 32, 2048)
        assert IDFormer()(torch.empty(1, 3, 1280), [torch.empty(1, 3 * 577, 1024)] * 5).shape == (1, 32, 2048)
        assert PerceiverAttentionCA()(torch.empty(2, 32, 2048), torch.empty(2, 4096, 3072)).shape == (2, 4096, 3072)
