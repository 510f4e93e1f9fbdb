"""OneStep sampling nodes run in-process against the real comfy package, checked against hand-written references."""

import comfy.model_base
import comfy.sample
import comfy.supported_models
import numpy as np
import pytest
import torch
from comfy_extras.nodes_custom_sampler import SamplerCustom
from onestep.nodes.presets import PresetError
from onestep.nodes.sampling import OneStepGenerate, OneStepInputError, OneStepSampler, OneStepSigmas

SD_SCALE_FACTOR = 0.18215
TEXT_TOKENS, CONTEXT_DIM = 7, 32


def conditioning(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, CONTEXT_DIM, generator=generator), {}]]


def sd_alpha_bar(timestep: int) -> float:
    """alpha-bar of the SD1.x 'scaled_linear' schedule, computed independently of ComfyUI."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return float(np.cumprod(1.0 - betas)[timestep])


def generate(model, positive, **overrides):
    inputs = dict(seed=7, batch_size=2, width=64, height=48, preset="auto", steps=1, custom_value=2.5)
    inputs.update(overrides)
    return OneStepGenerate.execute(model, positive, **inputs).result[0]["samples"]


def test_sid_lsg_one_step_equals_the_ddpm_formula_at_t625(tiny_sd15):
    positive = conditioning()
    samples = generate(tiny_sd15, positive, preset="sid-lsg")

    abar = sd_alpha_bar(625)
    z = torch.randn([2, 4, 6, 8], generator=torch.manual_seed(7))
    x_t = (1 - abar) ** 0.5 * z
    unet = tiny_sd15.model.diffusion_model
    with torch.no_grad():
        eps_hat = unet(x_t, torch.full([2], 625.0), context=positive[0][0].repeat(2, 1, 1))
    x0 = (x_t - (1 - abar) ** 0.5 * eps_hat) / abar**0.5
    torch.testing.assert_close(samples, x0 / SD_SCALE_FACTOR, rtol=1e-4, atol=1e-4)


class TinyEDM(comfy.supported_models.SD15):
    """The tiny UNet as a continuous-noise EDM denoiser (like the pack's EDM teachers)."""

    sampling_settings = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.EDM


@pytest.fixture
def tiny_edm(comfy_host):
    return comfy_host.tiny_model_patcher(TinyEDM)


def test_edm_preset_matches_karras_preconditioning(tiny_edm):
    positive = conditioning(1)
    samples = generate(tiny_edm, positive, preset="edm", batch_size=1)

    sigma, sigma_data = 2.5, 0.5
    x = sigma * torch.randn([1, 4, 6, 8], generator=torch.manual_seed(7))
    c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    c_noise = np.log(sigma) / 4
    with torch.no_grad():
        f = tiny_edm.model.diffusion_model(c_in * x, torch.tensor([c_noise]), context=positive[0][0])
    torch.testing.assert_close(samples, (c_skip * x + c_out * f) / SD_SCALE_FACTOR, rtol=1e-4, atol=1e-4)


def test_sampler_and_sigmas_through_stock_sampler_custom_match_generate(tiny_sd15):
    positive = conditioning(2)
    for steps in (1, 3):
        sampler = OneStepSampler.execute("sid-lsg").result[0]
        sigmas = OneStepSigmas.execute(tiny_sd15, "sid-lsg", steps, 0.0).result[0]
        latent = {"samples": torch.zeros([2, 4, 6, 8])}
        output = SamplerCustom.execute(tiny_sd15, True, 7, 1.0, positive, positive, sampler, sigmas, latent)
        expected = generate(tiny_sd15, positive, preset="sid-lsg", steps=steps)
        torch.testing.assert_close(output.result[0]["samples"], expected)


def test_k_step_sigmas_follow_sid_lsg_timesteps(tiny_sd15):
    sigmas = OneStepSigmas.execute(tiny_sd15, "sid-lsg", 4, 0.0).result[0]
    model_sampling = tiny_sd15.get_model_object("model_sampling")
    expected = [float(model_sampling.sigma(torch.tensor(t))) for t in (625.0, 468.0, 312.0, 156.0)] + [0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected))
    assert abs(float(sigmas[0]) - 2.5017) < 1e-3


def test_k_step_renoises_with_fresh_noise_and_is_reproducible(tiny_sd15):
    positive = conditioning(3)
    one = generate(tiny_sd15, positive, preset="sid-lsg", steps=1)
    two = generate(tiny_sd15, positive, preset="sid-lsg", steps=2)
    again = generate(tiny_sd15, positive, preset="sid-lsg", steps=2)
    other_seed = generate(tiny_sd15, positive, preset="sid-lsg", steps=2, seed=8)
    assert not torch.allclose(one, two)
    torch.testing.assert_close(two, again)
    assert not torch.allclose(two, other_seed)


def test_auto_preset_picks_edm_for_edm_models_and_asks_for_the_preset_of_a_stock_sd_model(tiny_sd15, tiny_edm):
    """A stock loader passes on no file name: an SD1.5 UNet could be a SiD-LSG student or a TCD / Hyper-SD one."""
    with pytest.raises(PresetError, match=r"cannot tell which student this SD1.5 model .*'tcd', 'sid-lsg'"):
        OneStepSigmas.execute(tiny_sd15, "auto", 1, 0.0)
    assert float(OneStepSigmas.execute(tiny_edm, "auto", 1, 0.0).result[0][0]) == pytest.approx(2.5)


def test_wrong_latent_channels_name_the_node_and_the_fix(tiny_sd15):
    sampler = OneStepSampler.execute("sid-lsg").result[0]
    sigmas = OneStepSigmas.execute(tiny_sd15, "sid-lsg", 1, 0.0).result[0]
    latent = {"samples": torch.ones([1, 16, 6, 8])}
    with pytest.raises(OneStepInputError, match=r"OneStep Sampler: the latent has 16 channels .* expects 4"):
        SamplerCustom.execute(tiny_sd15, True, 7, 1.0, conditioning(), conditioning(), sampler, sigmas, latent)


TINY_PIXART_CONFIG = {"image_model": "pixart_alpha", "input_size": 8, "patch_size": 2, "in_channels": 4,
                      "hidden_size": 32, "depth": 1, "num_heads": 2, "caption_channels": 16, "pe_interpolation": 1.0,
                      "micro_condition": False, "model_max_length": 8}


def pixart_sigma(timestep: int) -> float:
    """sigma_t of PixArt-alpha's linear beta schedule (1e-4 .. 0.02, 1000 steps), computed without ComfyUI."""
    alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[timestep]
    return float(((1 - alpha_bar) / alpha_bar) ** 0.5)


def test_sim_pixart_starts_at_sigma_2_5_on_the_nearest_discrete_timestep(comfy_host):
    """SIM-DiT: input 2.5 z, at the discrete timestep nearest sigma 2.5 (not the 2.50233 of that timestep)."""
    pixart = comfy_host.tiny_model_patcher(comfy.supported_models.PixArtAlpha, TINY_PIXART_CONFIG)
    nearest = min(range(1000), key=lambda t: abs(pixart_sigma(t) - 2.5))
    sigmas = OneStepSigmas.execute(pixart, "sim-pixart", 1, 0.0).result[0]
    assert sigmas.tolist() == [2.5, 0.0]
    seen = []
    hook = pixart.model.diffusion_model.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:
        # 512 px: PixArt derives its position-embedding scale from the size, and divides by zero below 256
        generate(pixart, [[torch.randn(1, 8, 16), {}]], preset="sim-pixart", width=512, height=512)
    finally:
        hook.remove()
    assert nearest == 440 and torch.equal(seen[0].float(), torch.full([2], float(nearest)))


def test_sim_pixart_preset_on_sd15_is_refused(tiny_sd15):
    with pytest.raises(PresetError, match="OneStep Sigmas: preset 'sim-pixart' is for SIM-DiT"):
        OneStepSigmas.execute(tiny_sd15, "sim-pixart", 1, 0.0)


def test_sigma_outside_the_model_range_is_refused(tiny_sd15):
    with pytest.raises(PresetError, match=r"OneStep Generate: .*sigma 50, outside this model's range"):
        generate(tiny_sd15, conditioning(), preset="custom-sigma", custom_value=50.0)


def test_non_positive_batch_size_is_refused(tiny_sd15):
    assert "batch_size must be 1 to 4096, got 0" in OneStepGenerate.validate_inputs(batch_size=0)
    with pytest.raises(OneStepInputError, match="OneStep Generate: batch_size must be 1 to 4096, got 0"):
        generate(tiny_sd15, conditioning(), batch_size=0)


def test_sid_lsg_preset_refuses_a_continuous_edm_model(tiny_edm):
    with pytest.raises(PresetError, match="preset 'sid-lsg' needs a DDPM"):
        OneStepSigmas.execute(tiny_edm, "sid-lsg", 1, 0.0)


def test_a_size_that_is_not_a_multiple_of_the_latent_downscale_is_refused(tiny_sd15):
    with pytest.raises(OneStepInputError, match="OneStep Generate: 60x48 is not a multiple of 8.*56x48"):
        generate(tiny_sd15, conditioning(), preset="sid-lsg", width=60)
