"""PuLID nodes in-process on small SDXL- and FLUX-shaped ComfyUI models (random weights, the real patch API).

The small models keep the structure PuLID patches (SDXL: the 70 cross-attentions in the same blocks;
FLUX: double and single blocks) with narrow widths; the PuLID modules are built with matching widths
and the official key names (pulid/weights.py).
"""

import comfy.model_management
import comfy.sample
import comfy.supported_models
import numpy as np
import pytest
import torch
from comfy_host import SDXL_UNET_CONFIG, flux1_config, tiny_model_patcher
from onestep.distill.student_file import StudentInfo
from onestep.nodes.presets import STUDENT_INFO_KEY
from onestep.nodes.pulid_apply import (
    ApplyPuLID,
    ApplyPuLIDFlux,
    PulidApplyError,
    PulidAttention,
    PulidFluxBlock,
    step_window,
)
from onestep.nodes.pulid_embed import PulidEmbedding
from onestep.nodes.pulid_loaders import PulidModel
from onestep.pulid.encoders import IDFormer
from onestep.pulid.injection import PerceiverAttentionCA, flux_contribution, flux_injection_indices, id_contribution
from onestep.pulid.weights import SDXL_CROSS_ATTENTION_SLOTS, Layout, PuLIDFlux, PuLIDSDXL

TOKEN_DIM = 8
TINY_SDXL_CONFIG = {**SDXL_UNET_CONFIG, "model_channels": 32, "context_dim": 16, "num_head_channels": 16}
TINY_FLUX_SIZES = dict(in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=16, hidden_size=32, mlp_ratio=2.0,
                       num_heads=2, depth=3, depth_single_blocks=5, axes_dim=[4, 6, 6], guidance_embed=False)
SDXL_HIDDEN = {640: 64, 1280: 128}  # official width -> the tiny model's width


@pytest.fixture(scope="module")
def tiny_sdxl():
    return tiny_model_patcher(comfy.supported_models.SDXL, TINY_SDXL_CONFIG)


@pytest.fixture(scope="module")
def tiny_flux():
    return tiny_model_patcher(comfy.supported_models.Flux, flux1_config(**TINY_FLUX_SIZES))


def randomised(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.eval()


def small_encoder():
    return IDFormer(dim=8, dim_head=4, heads=2, output_dim=TOKEN_DIM, id_dim=12, vit_width=6)


@pytest.fixture(scope="module")
def sdxl_pulid():
    hidden = [SDXL_HIDDEN[h] for *_, h in SDXL_CROSS_ATTENTION_SLOTS]
    module = randomised(PuLIDSDXL(small_encoder(), hidden, context_dim=TOKEN_DIM))
    return PulidModel(Layout("pulid_sdxl", "sdxl", "IDFormer"), module, "small_pulid_v1.1.safetensors")


@pytest.fixture(scope="module")
def flux_pulid():
    cross_attentions = [PerceiverAttentionCA(dim=32, dim_head=8, heads=2, kv_dim=TOKEN_DIM)
                        for _ in flux_injection_indices(3, 5)]
    module = randomised(PuLIDFlux(small_encoder(), cross_attentions))
    return PulidModel(Layout("pulid_flux", "flux", "IDFormer"), module, "small_pulid_flux.safetensors")


def embedding(base="sdxl", seed=1, tokens=6):
    generator = torch.Generator().manual_seed(seed)
    cond, uncond = (torch.randn(1, tokens, TOKEN_DIM, generator=generator) for _ in range(2))
    return PulidEmbedding(cond, uncond, base, np.zeros((1, 512), np.float32), "test")


def apply(model, pulid, embed, **overrides):
    inputs = dict(weight=1.0, start_at=0.0, end_at=1.0, preset="fidelity", projection="ortho_v2", num_zero_tokens=8)
    inputs.update(overrides)
    return ApplyPuLID.execute(model, pulid, embed, **inputs).result[0]


def sdxl_conditioning(batch=1):
    generator = torch.Generator().manual_seed(3)
    return [[torch.randn(batch, 5, 16, generator=generator), {"pooled_output": torch.zeros(batch, 1280)}]]


def sample(model, positive, negative=None, cfg=1.0, steps=2, latent_hw=(8, 8), batch=1, seed=5):
    latent = torch.zeros(batch, 4, *latent_hw)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative or positive, latent,
                               disable_pbar=True, seed=seed)


def test_apply_pulid_changes_the_clone_and_leaves_the_original_bit_identical(tiny_sdxl, sdxl_pulid):
    positive = sdxl_conditioning()
    before = sample(tiny_sdxl, positive)
    patched = apply(tiny_sdxl, sdxl_pulid, embedding())
    with_id = sample(patched, positive)
    after = sample(tiny_sdxl, positive)
    assert torch.equal(before, after)
    assert "patches_replace" not in tiny_sdxl.model_options["transformer_options"]
    assert (with_id - before).abs().mean() > 1e-3
    del patched
    assert torch.equal(sample(tiny_sdxl, positive), before)


def test_weight_zero_is_the_plain_model(tiny_sdxl, sdxl_pulid):
    positive = sdxl_conditioning()
    patched = apply(tiny_sdxl, sdxl_pulid, embedding(), weight=0.0, preset="neutral")
    torch.testing.assert_close(sample(patched, positive), sample(tiny_sdxl, positive), rtol=1e-5, atol=1e-5)


def patch_of(model, slot=30):
    block, block_id, index, _ = SDXL_CROSS_ATTENTION_SLOTS[slot]
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][(block, block_id, index)]


def attention_inputs(batch, tokens=16, width=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens, width, generator=generator)
    k, v = (torch.randn(batch, 5, width, generator=generator) for _ in range(2))
    return q, k, v


def reference_term(pulid, embed, slot, q, h, which, projection="ortho_v2", num_zero=8, weight=1.0, heads=8):
    tokens = torch.cat([getattr(embed, which), torch.zeros(1, num_zero, TOKEN_DIM)], dim=1)
    layer = pulid.module.projection(slot)
    k_id, v_id = layer.id_to_k(tokens), layer.id_to_v(tokens)
    return id_contribution(h, q, k_id.expand(q.shape[0], -1, -1), v_id.expand(q.shape[0], -1, -1), heads,
                           projection, weight)


def test_cfg_chunks_get_their_own_id_tokens(tiny_sdxl, sdxl_pulid):
    embed = embedding()
    patch = patch_of(apply(tiny_sdxl, sdxl_pulid, embed))
    q, k, v = attention_inputs(4)
    options = {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": torch.ones(4), "original_shape": [4, 4, 8, 8]}
    out = patch(q, k, v, options)
    h = torch.nn.functional.scaled_dot_product_attention(
        *(t.unflatten(-1, (8, -1)).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).flatten(2)
    with torch.no_grad():
        uncond = reference_term(sdxl_pulid, embed, 30, q[:2], h[:2], "uncond")
        cond = reference_term(sdxl_pulid, embed, 30, q[2:], h[2:], "cond")
    torch.testing.assert_close(out, h + torch.cat([uncond, cond]), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(uncond, cond, atol=1e-3)


def test_the_v1_1_preset_uses_the_weight_input(tiny_sdxl, sdxl_pulid):
    """Official app_v1_1.py: 0.8 is where the id scale slider starts, not a fixed value; the preset sets only
    ortho_v2 and NUM_ZERO 20."""
    embed = embedding()
    q, k, v = attention_inputs(1)
    options = {"n_heads": 8, "cond_or_uncond": [0], "sigmas": torch.ones(1), "original_shape": [1, 4, 8, 8]}
    plain = PulidAttention(30, ())(q, k, v, options)
    for weight in (0.5, 1.3):
        patch = patch_of(apply(tiny_sdxl, sdxl_pulid, embed, preset="v1.1", weight=weight, num_zero_tokens=3,
                               projection="none"))
        assert patch.faces[0].weight == weight
        with torch.no_grad():
            expected = reference_term(sdxl_pulid, embed, 30, q, plain, "cond", "ortho_v2", 20, weight)
        torch.testing.assert_close(patch(q, k, v, options) - plain, expected, rtol=1e-4, atol=1e-5)


def test_an_attention_override_runs_in_every_patched_cross_attention(tiny_sdxl, sdxl_pulid):
    """ComfyUI's ``optimized_attention_override`` (transformer_options) is called for the text attention of all
    70 layers PuLID patches, as it is for an unpatched cross-attention."""
    called = set()

    def override(attention, q, k, v, heads, *args, **kwargs):
        options = kwargs["transformer_options"]
        if k.shape[1] == 5:  # the 5 text tokens: a cross-attention (self-attentions see the image tokens)
            called.add((*options["block"], options["block_index"]))
        return attention(q, k, v, heads, *args, **kwargs)

    model = tiny_sdxl.clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = override
    sample(model, sdxl_conditioning(), steps=1)
    slots = {(block, block_id, index) for block, block_id, index, _ in SDXL_CROSS_ATTENTION_SLOTS}
    assert called == slots  # unpatched: the host calls the override in every cross-attention
    called.clear()
    sample(apply(model, sdxl_pulid, embedding()), sdxl_conditioning(), steps=1)
    assert len(slots) == 70 and called == slots


def test_masks_per_sample_and_two_faces(tiny_sdxl, sdxl_pulid):
    left = torch.zeros(2, 64, 64)
    left[0, :, :32] = 1  # sample 0: the left half; sample 1: nowhere
    right = torch.zeros(1, 64, 64)
    right[:, :, 32:] = 1
    first, second = embedding(seed=1), embedding(seed=2)
    once = apply(tiny_sdxl, sdxl_pulid, first, attn_mask=left, preset="neutral")
    twice = apply(once, sdxl_pulid, second, attn_mask=right, preset="neutral")
    assert len(patch_of(twice).faces) == 2 and len(patch_of(once).faces) == 1  # the first clone is unchanged
    q, k, v = attention_inputs(2)
    options = {"n_heads": 8, "cond_or_uncond": [0], "sigmas": torch.ones(2), "original_shape": [2, 4, 8, 8]}
    plain = PulidAttention(30, ())(q, k, v, options)
    delta = patch_of(twice)(q, k, v, options) - plain
    columns = torch.arange(16) % 4  # the 4x4 token grid of this layer, row-major
    with torch.no_grad():
        term_first = reference_term(sdxl_pulid, first, 30, q, plain, "cond", "none", 0)
        term_second = reference_term(sdxl_pulid, second, 30, q, plain, "cond", "none", 0)
    torch.testing.assert_close(delta[0, columns < 2], term_first[0, columns < 2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(delta[0, columns >= 2], term_second[0, columns >= 2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(delta[1, columns >= 2], term_second[1, columns >= 2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(delta[1, columns < 2], torch.zeros_like(delta[1, columns < 2]), rtol=0, atol=1e-6)


def test_a_mask_of_another_shape_is_refused(tiny_sdxl, sdxl_pulid):
    patched = apply(tiny_sdxl, sdxl_pulid, embedding(), attn_mask=torch.ones(64, 32))
    with pytest.raises(PulidApplyError, match="attn_mask is 32x64 but the image is 64x64"):
        sample(patched, sdxl_conditioning())


def test_foreign_attention_patches_are_kept(tiny_sdxl, sdxl_pulid):
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(q.shape)
        return torch.zeros_like(q)

    model = tiny_sdxl.clone()
    block, block_id, index, _ = SDXL_CROSS_ATTENTION_SLOTS[30]
    model.set_model_attn2_replace(foreign, block, block_id, index)
    patch = patch_of(apply(model, sdxl_pulid, embedding()))
    q, k, v = attention_inputs(1)
    patch(q, k, v, {"n_heads": 8, "cond_or_uncond": [0], "sigmas": torch.ones(1), "original_shape": [1, 4, 8, 8]})
    assert calls == [q.shape] and patch.previous is foreign


def test_wrong_model_and_wrong_weights_are_refused(tiny_sdxl, tiny_sd15, sdxl_pulid, flux_pulid, tiny_flux):
    with pytest.raises(PulidApplyError, match="Apply PuLID: .* is PuLID for SDXL, but this .* cross-attention"):
        apply(tiny_sd15, sdxl_pulid, embedding())
    with pytest.raises(PulidApplyError, match="FLUX weights .* but the model is SDXL"):
        apply(tiny_sdxl, flux_pulid, embedding("flux"))
    with pytest.raises(PulidApplyError, match="embedding was made with PuLID FLUX"):
        apply(tiny_sdxl, sdxl_pulid, embedding("flux"))
    with pytest.raises(PulidApplyError, match="SDXL weights .* but the model is FLUX"):
        flux_apply(tiny_flux, sdxl_pulid, embedding())
    with pytest.raises(PulidApplyError, match="PuLID for FLUX, but this is a SDXL model"):
        flux_apply(tiny_sdxl, flux_pulid, embedding("flux"))
    with pytest.raises(PulidApplyError, match="start .* must be below end"):
        apply(tiny_sdxl, sdxl_pulid, embedding(), start_at=0.5, end_at=0.5)


def test_start_end_on_a_one_step_student_are_fractions_of_its_own_steps(tiny_sdxl, sdxl_pulid):
    student = tiny_sdxl.clone()
    student.model_options[STUDENT_INFO_KEY] = StudentInfo(preset="sid-lsg")
    sigma_625 = float(student.get_model_object("model_sampling").sigma(torch.tensor(625.0)))
    whole, later = step_window(student, 0.0, 1.0, "test"), step_window(student, 0.5, 1.0, "test")
    assert whole.active(torch.tensor([sigma_625])) and not later.active(torch.tensor([sigma_625]))
    assert later.sigma_start == pytest.approx(float(student.get_model_object("model_sampling").sigma(
        torch.tensor(312.5))), rel=1e-6)
    teacher_window = step_window(tiny_sdxl, 0.5, 1.0, "test")  # the teacher's schedule: 0.5 is t = 499.5
    assert teacher_window.active(torch.tensor([1.0])) and not teacher_window.active(torch.tensor([sigma_625]))

    from onestep.nodes.sampling import OneStepGenerate

    def generate(model):
        inputs = dict(seed=7, batch_size=1, width=64, height=64, preset="auto", steps=1, custom_value=0.0)
        return OneStepGenerate.execute(model, sdxl_conditioning(), **inputs).result[0]["samples"]

    plain = generate(student)
    assert (generate(apply(student, sdxl_pulid, embedding())) - plain).abs().mean() > 1e-3
    assert torch.equal(generate(apply(student, sdxl_pulid, embedding(), start_at=0.5)), plain)


def flux_apply(model, pulid, embed, **overrides):
    inputs = dict(weight=1.0, start_at=0.0, end_at=1.0)
    inputs.update(overrides)
    return ApplyPuLIDFlux.execute(model, pulid, embed, **inputs).result[0]


def flux_conditioning():
    generator = torch.Generator().manual_seed(4)
    return [[torch.randn(1, 7, 16, generator=generator), {"pooled_output": torch.zeros(1, 8)}]]


def test_flux_patch_adds_the_cross_attention_to_image_tokens_and_leaves_the_original(tiny_flux, flux_pulid):
    positive = flux_conditioning()
    before = sample(tiny_flux, positive)
    embed = embedding("flux")
    patched = flux_apply(tiny_flux, flux_pulid, embed, weight=0.7)
    assert (sample(patched, positive) - before).abs().mean() > 1e-3
    assert torch.equal(sample(tiny_flux, positive), before)
    blocks = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(blocks) == sorted(flux_injection_indices(3, 5))

    generator = torch.Generator().manual_seed(0)
    txt, img = torch.randn(1, 7, 32, generator=generator), torch.randn(1, 16, 32, generator=generator)
    options = {"cond_or_uncond": [0], "sigmas": torch.ones(1)}
    double = blocks[("double_block", 2)]
    out = double({"img": img, "txt": txt, "transformer_options": options},
                 {"original_block": lambda args: {"img": args["img"] * 2, "txt": args["txt"]}})
    with torch.no_grad():
        expected = 2 * img + flux_contribution(flux_pulid.module.pulid_ca[1], embed.cond, 2 * img, 0.7)
    torch.testing.assert_close(out["img"], expected, rtol=1e-5, atol=1e-6)
    assert options["onestep_pulid_txt_tokens"] == 7
    single = blocks[("single_block", 4)]
    joint = torch.cat([txt, img], dim=1)
    out = single({"img": joint, "transformer_options": options}, {"original_block": lambda args: {"img": args["img"]}})
    with torch.no_grad():
        expected = img + flux_contribution(flux_pulid.module.pulid_ca[3], embed.cond, img, 0.7)
    torch.testing.assert_close(out["img"][:, :7], txt)
    torch.testing.assert_close(out["img"][:, 7:], expected, rtol=1e-5, atol=1e-6)
    assert isinstance(single, PulidFluxBlock) and single.ca_index == 3


def test_flux_pulid_of_another_size_is_refused(tiny_flux):
    cross_attentions = [PerceiverAttentionCA(dim=32, dim_head=8, heads=2, kv_dim=TOKEN_DIM) for _ in range(20)]
    pulid = PulidModel(Layout("pulid_flux", "flux", "IDFormer"), PuLIDFlux(small_encoder(), cross_attentions), "f")
    with pytest.raises(PulidApplyError, match="has 20 cross-attentions .* 3 double and 5 single blocks"):
        flux_apply(tiny_flux, pulid, embedding("flux"))


def test_flux_cross_attentions_ride_with_the_model(tiny_flux, flux_pulid):
    patched = flux_apply(tiny_flux, flux_pulid, embedding("flux"))
    twice = flux_apply(patched, flux_pulid, embedding("flux", seed=2))
    assert [m.model for m in twice.get_additional_models_with_key("onestep_pulid")] == [flux_pulid.module.pulid_ca] * 2
    assert len(twice.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].faces) == 2
    comfy.model_management.load_models_gpu([twice])  # the cross-attentions load with the model


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_flux_cross_attentions_run_in_the_model_dtype(flux_pulid, dtype):
    """The official FLUX pipeline runs pulid_ca in the FLUX model's dtype (bf16): half the memory of fp32, and
    the same result as the fp32 modules to bf16 precision."""
    model = tiny_model_patcher(comfy.supported_models.Flux, flux1_config(**TINY_FLUX_SIZES), dtype=dtype)
    embed = embedding("flux")
    patched = flux_apply(model, flux_pulid, embed, weight=0.7)
    [ca_patcher] = patched.get_additional_models_with_key("onestep_pulid")
    cross_attentions = ca_patcher.model
    assert {p.dtype for p in cross_attentions.parameters()} == {dtype}
    assert {p.dtype for p in flux_pulid.module.pulid_ca.parameters()} == {torch.float32}  # the loaded file's
    assert parameter_bytes(cross_attentions) == parameter_bytes(flux_pulid.module.pulid_ca) * dtype.itemsize // 4
    assert (cross_attentions is flux_pulid.module.pulid_ca) == (dtype == torch.float32)
    again = flux_apply(model, flux_pulid, embedding("flux", seed=2))
    assert again.get_additional_models_with_key("onestep_pulid")[0].model is cross_attentions  # one copy per dtype

    block = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 2)]
    assert block.faces[0].cross_attentions is cross_attentions
    generator = torch.Generator().manual_seed(0)
    txt, img = torch.randn(1, 7, 32, generator=generator), torch.randn(1, 16, 32, generator=generator)
    options = {"cond_or_uncond": [0], "sigmas": torch.ones(1)}
    out = block({"img": img.to(dtype), "txt": txt.to(dtype), "transformer_options": options},
                {"original_block": lambda args: {"img": args["img"], "txt": args["txt"]}})
    assert out["img"].dtype == dtype
    with torch.no_grad():  # the fp32 reference: the loaded modules on the fp32 image tokens
        delta = flux_contribution(flux_pulid.module.pulid_ca[1], embed.cond, img.to(dtype).float(), 0.7)
    bf16_tolerance = 1.6e-2  # torch.testing's bf16 rtol: 2**-6
    torch.testing.assert_close(out["img"].float(), img.to(dtype).float() + delta, rtol=bf16_tolerance,
                               atol=bf16_tolerance * float(delta.abs().max()))
    if dtype == torch.float32:
        torch.testing.assert_close(out["img"], img + delta, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(sample(patched, flux_conditioning(), steps=1)).all()


def test_the_protected_identity_guard_refuses_a_matching_face(tiny_sdxl, sdxl_pulid):
    from onestep.safety.errors import ProtectedIdentityError, SafetyInputError
    from onestep.safety.identity import IdentityGallery

    rng = np.random.default_rng(0)
    protected, other = rng.normal(size=(2, 512))
    gallery = IdentityGallery(protected[None], ["protected person"], "InsightFace (antelopev2)")

    def embedding_of(vector, analyzer="InsightFace (antelopev2)"):
        embed = embedding()
        embed.recognition, embed.analyzer_name = vector[None].astype(np.float32), analyzer
        return embed

    with pytest.raises(ProtectedIdentityError, match="Apply PuLID: refused: .* 'protected person'"):
        apply(tiny_sdxl, sdxl_pulid, embedding_of(protected + 0.1 * other), protected_identities=gallery)
    with pytest.raises(SafetyInputError, match="Apply PuLID: the protected gallery was built with InsightFace"):
        apply(tiny_sdxl, sdxl_pulid, embedding_of(other, "YuNet + SFace"), protected_identities=gallery)
    assert apply(tiny_sdxl, sdxl_pulid, embedding_of(other), protected_identities=gallery) is not tiny_sdxl
