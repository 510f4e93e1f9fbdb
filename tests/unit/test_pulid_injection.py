"""The injection math against plain loop re-statements of the official attention processor."""

import math

import pytest
import torch
from onestep.pulid.injection import (
    PRESETS,
    PerceiverAttentionCA,
    add_contributions,
    append_zero_tokens,
    batch_for_chunks,
    flux_contribution,
    flux_injection_indices,
    flux_token_grid,
    id_contribution,
    mask_to_tokens,
    ortho_v2_weight,
    sdxl_token_grid,
)

B, N, T, HEADS, D = 2, 12, 7, 2, 4  # batch, image tokens, ID tokens, heads, head width
C = HEADS * D


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    h, q = (
        torch.randn(B, N, C, generator=g, dtype=torch.float64),
        torch.randn(B, N, C, generator=g, dtype=torch.float64),
    )
    k, v = (
        torch.randn(B, T, C, generator=g, dtype=torch.float64),
        torch.randn(B, T, C, generator=g, dtype=torch.float64),
    )
    return h, q, k, v


def loop_attention(q, k, v, heads, scale=True):
    """out[b, n, head] = sum_t softmax_t(q.k (/ sqrt d)) v, one query at a time."""
    b_, n_, c_ = q.shape
    d = c_ // heads
    out, weights = torch.zeros_like(q), torch.zeros(b_, heads, n_, k.shape[1], dtype=q.dtype)
    for b in range(b_):
        for head in range(heads):
            cols = slice(head * d, (head + 1) * d)
            for n in range(n_):
                logits = torch.stack([q[b, n, cols] @ k[b, t, cols] for t in range(k.shape[1])])
                w = torch.softmax(logits / (math.sqrt(d) if scale else 1), dim=0)
                weights[b, head, n] = w
                out[b, n, cols] = sum(w[t] * v[b, t, cols] for t in range(k.shape[1]))
    return out, weights


def loop_projection(h, x):
    """proj[b, n, c] = (sum_n' h x / sum_n' h h)[b, c] * h[b, n, c]."""
    proj = torch.zeros_like(h)
    for b in range(h.shape[0]):
        for c in range(h.shape[2]):
            ratio = sum(h[b, n, c] * x[b, n, c] for n in range(h.shape[1])) / sum(
                h[b, n, c] ** 2 for n in range(h.shape[1])
            )
            proj[b, :, c] = ratio * h[b, :, c]
    return proj


def test_plain(tensors):
    h, q, k, v = tensors
    expected = 0.7 * loop_attention(q, k, v, HEADS)[0]
    torch.testing.assert_close(id_contribution(h, q, k, v, HEADS, "none", 0.7), expected)


def test_ortho(tensors):
    h, q, k, v = tensors
    id_out = loop_attention(q, k, v, HEADS)[0]
    expected = 0.7 * (id_out - loop_projection(h, id_out))
    torch.testing.assert_close(id_contribution(h, q, k, v, HEADS, "ortho", 0.7).double(), expected)


def test_ortho_v2(tensors):
    h, q, k, v = tensors
    id_out = loop_attention(q, k, v, HEADS)[0]
    unscaled = loop_attention(q, k, v, HEADS, scale=False)[1]  # the official weight uses q k^T without 1/sqrt(d)
    a = unscaled.mean(dim=1)[..., :5].sum(-1, keepdim=True)  # mean over heads, first 5 ID tokens
    expected = 0.7 * (id_out + (a - 1) * loop_projection(h, id_out))
    torch.testing.assert_close(id_contribution(h, q, k, v, HEADS, "ortho_v2", 0.7).double(), expected)


def test_ortho_v2_weighs_each_query_position(tensors):
    h, q, k, v = tensors
    a = ortho_v2_weight(q, k, HEADS)
    assert a.shape == (B, N, 1) and a.std(dim=1).min() > 1e-3
    id_out = loop_attention(q, k, v, HEADS)[0]
    sequence_mean = id_out + (a.mean(dim=1, keepdim=True) - 1) * loop_projection(h, id_out)  # the known port bug
    assert not torch.allclose(id_contribution(h, q, k, v, HEADS, "ortho_v2", 1.0).double(), sequence_mean)


def test_zero_tokens_are_sinks(tensors):
    h, q, k, v = tensors
    tokens = torch.randn(B, T, 5, dtype=torch.float64)
    to_k, to_v = torch.randn(5, C, dtype=torch.float64), torch.randn(5, C, dtype=torch.float64)  # bias-free projections
    with_zeros = append_zero_tokens(tokens, 3)
    assert with_zeros.shape == (B, T + 3, 5) and not with_zeros[:, T:].any()
    out = id_contribution(h, q, tokens @ to_k, tokens @ to_v, HEADS, "none")
    sunk = id_contribution(h, q, with_zeros @ to_k, with_zeros @ to_v, HEADS, "none")
    # each zero key scores exp(0) = 1 and carries a zero value: the output shrinks by Z / (Z + 3) per head
    logits = (
        q.unflatten(-1, (HEADS, D)).transpose(1, 2) @ (tokens @ to_k).unflatten(-1, (HEADS, D)).permute(0, 2, 3, 1)
    ) / math.sqrt(D)
    z = logits.exp().sum(-1)  # [B, heads, N]
    shrink = (z / (z + 3)).transpose(1, 2).repeat_interleave(D, dim=-1)
    torch.testing.assert_close(sunk, out * shrink)


def test_presets_match_the_official_apps():
    assert PRESETS["fidelity"].projection == "ortho_v2" and PRESETS["fidelity"].num_zero == 8
    assert PRESETS["style"].projection == "ortho" and PRESETS["style"].num_zero == 16
    v1_1 = PRESETS["v1.1"]
    assert (v1_1.projection, v1_1.num_zero, v1_1.default_weight) == ("ortho_v2", 20, 0.8)


def test_cond_and_uncond_chunks_get_their_own_tokens(tensors):
    _, q, _, _ = tensors
    cond, uncond = torch.full((1, T, C), 1.0, dtype=torch.float64), torch.full((1, T, C), -1.0, dtype=torch.float64)
    q4 = torch.cat([q, q])  # ComfyUI batch: chunk 0 uncond, chunk 1 cond, 2 samples each
    tokens = batch_for_chunks(cond, uncond, [1, 0], batch=4)
    assert torch.equal(tokens[:2], uncond.expand(2, -1, -1)) and torch.equal(tokens[2:], cond.expand(2, -1, -1))
    h4 = torch.randn(4, N, C, dtype=torch.float64)
    batched = id_contribution(h4, q4, tokens, tokens, HEADS, "ortho_v2")
    alone = id_contribution(h4[:2], q, uncond.expand(2, -1, -1), uncond.expand(2, -1, -1), HEADS, "ortho_v2")
    torch.testing.assert_close(batched[:2], alone)
    per_sample = torch.randn(2, T, C)
    assert torch.equal(batch_for_chunks(per_sample, per_sample, [0, 1], batch=4)[2:], per_sample)
    with pytest.raises(ValueError, match="3 per-sample entries for chunks of 2"):
        batch_for_chunks(torch.zeros(3, T, C), uncond, [0, 1], batch=4)


def test_token_grids():
    assert [sdxl_token_grid((128, 96), n) for n in (128 * 96, 64 * 48, 32 * 24)] == [(128, 96), (64, 48), (32, 24)]
    assert sdxl_token_grid((129, 97), 33 * 25) == (33, 25)  # ceil rounding of stride-2 convolutions
    assert flux_token_grid((129, 96)) == (65, 48)
    with pytest.raises(ValueError, match="do not tile"):
        sdxl_token_grid((128, 96), 1000)


def test_masks_confine_each_face_and_faces_add():
    h = torch.randn(2, 16, C)
    left, right = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    left[..., :32], right[..., 32:] = 1, 1
    grid = sdxl_token_grid((8, 8), 16)
    masks = [mask_to_tokens(left, grid), mask_to_tokens(right, grid)]
    assert masks[0].shape == (1, 16, 1)
    deltas = [torch.randn(2, 16, C), torch.randn(2, 16, C)]
    out = add_contributions(h, deltas, masks)
    columns = torch.arange(16) % 4
    torch.testing.assert_close(out[:, columns < 2], (h + deltas[0])[:, columns < 2])
    torch.testing.assert_close(out[:, columns >= 2], (h + deltas[1])[:, columns >= 2])
    torch.testing.assert_close(add_contributions(h, deltas, [None, None]), h + deltas[0] + deltas[1])
    torch.testing.assert_close(add_contributions(h, [deltas[0]], [torch.zeros(1, 16, 1)]), h)


def test_flux_injection_points():
    points = flux_injection_indices()
    assert len(points) == 20
    assert points[:10] == [("double_block", i) for i in range(0, 19, 2)]
    assert points[10:] == [("single_block", i) for i in range(0, 38, 4)]


def test_flux_cross_attention_against_a_loop():
    torch.manual_seed(0)
    ca = PerceiverAttentionCA(dim=6, dim_head=3, heads=2, kv_dim=5).double()
    assert set(ca.state_dict()) == {
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
        "to_q.weight",
        "to_kv.weight",
        "to_out.weight",
    }
    id_tokens, img = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 9, 6, dtype=torch.float64)
    k, v = ca.to_kv(ca.norm1(id_tokens)).chunk(2, dim=-1)
    expected = ca.to_out(loop_attention(ca.to_q(ca.norm2(img)), k, v, heads=2)[0])
    torch.testing.assert_close(ca(id_tokens, img), expected)
    torch.testing.assert_close(flux_contribution(ca, id_tokens, img, 0.5), 0.5 * expected)
