"""Known answers for the few-step presets (SD-Turbo, SDXL-Turbo, DMD2, Hyper-SD, SDXL-Lightning, TCD).

Each reference below is the official pipeline's scheduler arithmetic, written out here from the cited source (diffusers'
scheduler code, in its own variance-preserving form, on the SD / SDXL "scaled_linear" schedule computed with numpy),
and never calls the pack. The network is a stand-in whose answer is a known function of its input and timestep, put in
place of a tiny model's UNet, so the comparison is exact arithmetic, not a statistical one. The pack's re-noising noise
(``fresh_noise``) is taken as an input of the formulas, as diffusers takes its generator's draws.
"""

import comfy.model_sampling
import comfy.supported_models
import numpy as np
import pytest
import torch
from comfy_extras.nodes_custom_sampler import KSamplerSelect, SamplerCustom
from comfy_host import TINY_POOLED_DIM, TINY_SDXL_UNET_CONFIG, TINY_UNET_CONFIG
from onestep.distill.one_step import fresh_noise
from onestep.distill.student_file import StudentInfo
from onestep.nodes.presets import STUDENT_INFO_KEY, PresetError
from onestep.nodes.sampling import OneStepGenerate, OneStepSampler, OneStepSigmas
from onestep.nodes.students import info_from_file_name

SEED, BATCH, WIDTH, HEIGHT = 11, 2, 64, 48
LATENT_SHAPE = [BATCH, 4, HEIGHT // 8, WIDTH // 8]
SCALE_FACTOR = {"sdxl": 0.13025, "sd15": 0.18215, "sd2": 0.18215}


def alphas_cumprod() -> np.ndarray:
    """The SD1.x / SD2.x / SDXL schedule: betas linear in sqrt from 0.00085 to 0.012 over 1000 steps
    (diffusers beta_schedule "scaled_linear", in every cited scheduler_config.json)."""
    return np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2)


AC = alphas_cumprod()


def sigma_of(t: int) -> float:
    """diffusers' Euler sigmas: ((1 - alpha_bar) / alpha_bar) ** 0.5."""
    return float(((1 - AC[t]) / AC[t]) ** 0.5)


def trailing(k: int) -> list[int]:
    """diffusers, timestep_spacing "trailing": np.round(np.arange(1000, 0, -1000 / k)) - 1."""
    return [int(t) for t in np.round(np.arange(1000, 0, -1000 / k)) - 1]


def tcd_schedule(k: int) -> list[int]:
    """diffusers TCDScheduler.set_timesteps (original_inference_steps 50, strength 1): the timesteps 20 j - 1,
    reversed, at indices floor(np.linspace(0, 50, k, endpoint=False))."""
    origin = (np.arange(1, 51) * 20 - 1)[::-1]
    return [int(t) for t in origin[np.floor(np.linspace(0, 50, num=k, endpoint=False)).astype(np.int64)]]


def toy_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The stand-in UNet's answer: a smooth function of its input and of the timestep it is told."""
    return 0.9 * torch.sin(1.3 * x + t.view(-1, *[1] * (x.ndim - 1)) / 250.0)


class ToyUNet(torch.nn.Module):
    """Takes a UNet's place in a ComfyUI model: same call, answer ``toy_network``."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.dtype = torch.float32

    def forward(self, x, timesteps, **_):
        return toy_network(x, timesteps)


def toy_model(comfy_host, family: str):
    config = {"sdxl": (comfy.supported_models.SDXL, TINY_SDXL_UNET_CONFIG),
              "sd15": (comfy.supported_models.SD15, TINY_UNET_CONFIG),
              # SD2's config sets 64 channels per attention head
              "sd2": (comfy.supported_models.SD20, {**TINY_UNET_CONFIG, "model_channels": 64})}[family]
    patcher = comfy_host.tiny_model_patcher(*config)
    patcher.model.diffusion_model = ToyUNet()
    return patcher


@pytest.fixture(scope="module")
def sdxl(comfy_host):
    return toy_model(comfy_host, "sdxl")


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return toy_model(comfy_host, "sd15")


@pytest.fixture(scope="module")
def sd2(comfy_host):
    return toy_model(comfy_host, "sd2")


def conditioning():
    return [[torch.zeros(1, 5, 32), {"pooled_output": torch.zeros(1, TINY_POOLED_DIM)}]]


def generate(model, preset: str, steps: int) -> torch.Tensor:
    inputs = dict(seed=SEED, batch_size=BATCH, width=WIDTH, height=HEIGHT, preset=preset, steps=steps, custom_value=0.0)
    return OneStepGenerate.execute(model, conditioning(), **inputs).result[0]["samples"]


def initial_noise() -> torch.Tensor:
    return torch.randn(LATENT_SHAPE, generator=torch.manual_seed(SEED))


def noise_of_step(i: int) -> torch.Tensor:
    return fresh_noise(torch.zeros(LATENT_SHAPE), SEED, i)


def eps_to_x0(sample, eps, t):
    """pred_original_sample for epsilon prediction (every cited scheduler): (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    return (sample - (1 - AC[t]) ** 0.5 * eps) / AC[t] ** 0.5


def lcm_reference(timesteps: list[int]) -> torch.Tensor:
    """diffusers LCMScheduler with explicit timesteps (DMD2, Hyper-SDXL 1-step UNet): latents = z (init_noise_sigma
    1); denoised = c_out x0 + c_skip x_t with the boundary scalings at 10 t (sigma_data 0.5; c_skip < 4e-8 here);
    between steps x = sqrt(a_prev) denoised + sqrt(1 - a_prev) noise; the last step returns denoised."""
    sample = initial_noise().double()
    for i, t in enumerate(timesteps):
        x0 = eps_to_x0(sample, toy_network(sample, torch.full([BATCH], float(t))), t)
        scaled = 10.0 * t
        c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25) ** 0.5
        denoised = c_out * x0 + c_skip * sample
        if i == len(timesteps) - 1:
            return denoised
        previous = timesteps[i + 1]
        sample = AC[previous] ** 0.5 * denoised + (1 - AC[previous]) ** 0.5 * noise_of_step(i).double()


def euler_reference(timesteps: list[int], ancestral: bool = False, x0_prediction: bool = False) -> torch.Tensor:
    """diffusers EulerDiscreteScheduler / EulerAncestralDiscreteScheduler with trailing spacing: latents = sigma_max z
    (init_noise_sigma is sigma_max for "trailing"); the network sees x / sqrt(sigma^2 + 1); x0 = x - sigma eps (or
    the output itself, prediction_type "sample"); Euler: x += (x - x0) / sigma * (sigma_next - sigma); ancestral:
    sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2),
    x += (x - x0) / sigma * (sigma_down - sigma) + noise * sigma_up."""
    sigmas = [sigma_of(t) for t in timesteps] + [0.0]
    sample = initial_noise().double() * sigmas[0]
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        output = toy_network(sample / (sigma**2 + 1) ** 0.5, torch.full([BATCH], float(t)))
        x0 = output if x0_prediction else sample - sigma * output
        derivative = (sample - x0) / sigma
        if not ancestral:
            sample = sample + derivative * (sigma_next - sigma)
            continue
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        sample = sample + derivative * (sigma_down - sigma)
        if sigma_next > 0:
            sample = sample + noise_of_step(i).double() * sigma_up
    return sample


def ddim_reference(k: int) -> torch.Tensor:
    """diffusers DDIMScheduler, trailing, eta 0 (Hyper-SD N-step LoRAs): latents = z; prev_t = t - 1000 // k;
    x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with a_prev = alphas_cumprod[0] past the end (set_alpha_to_one
    false). Returns the last step's x0 (pred_original_sample): the scheduler's own last sample is that x0 taken on to
    timestep 0, sqrt(a_0) x0 + sqrt(1 - a_0) eps, 0.03 eps from it; the pack stops at x0 (README)."""
    sample = initial_noise().double()
    for t in trailing(k):
        eps = toy_network(sample, torch.full([BATCH], float(t)))
        x0 = eps_to_x0(sample, eps, t)
        previous = AC[t - 1000 // k] if t - 1000 // k >= 0 else AC[0]
        sample = previous**0.5 * x0 + (1 - previous) ** 0.5 * eps
    return x0


def tcd_reference(k: int, gamma: float) -> torch.Tensor:
    """diffusers TCDScheduler.step (eta = gamma): latents = z; s = floor((1 - gamma) t_prev);
    x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps; then x_prev = sqrt(a_prev / a_s) x_s + sqrt(1 - a_prev / a_s) noise.
    Returns the last step's x0 (see ddim_reference on the scheduler's last sample)."""
    timesteps = tcd_schedule(k)
    sample = initial_noise().double()
    for i, t in enumerate(timesteps):
        eps = toy_network(sample, torch.full([BATCH], float(t)))
        x0 = eps_to_x0(sample, eps, t)
        if i == k - 1:
            return x0
        previous = timesteps[i + 1]
        s = int(np.floor((1 - gamma) * previous))
        x_s = AC[s] ** 0.5 * x0 + (1 - AC[s]) ** 0.5 * eps
        ratio = AC[previous] / AC[s]
        sample = ratio**0.5 * x_s + (1 - ratio) ** 0.5 * noise_of_step(i).double()


def assert_latent(samples: torch.Tensor, x0: torch.Tensor, family: str) -> None:
    """OneStep Generate returns ComfyUI's latent: x0 divided by the family's VAE scale factor."""
    torch.testing.assert_close(samples.double(), x0 / SCALE_FACTOR[family], rtol=2e-5, atol=2e-5)


def sigmas_of(model, preset: str, steps: int) -> list[float]:
    return OneStepSigmas.execute(model, preset, steps, 0.0).result[0].tolist()


def expected_sigmas(timesteps: list[int]) -> list[float]:
    return pytest.approx([sigma_of(t) for t in timesteps] + [0.0], rel=2e-5)


# --- noise levels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "steps", "timesteps"), [
    ("dmd2-sdxl-1step", 1, [399]),
    ("dmd2-sdxl-4step", 4, [999, 749, 499, 249]),
    ("hyper-sdxl-1step", 1, [800]),
    ("sdxl-turbo", 1, [999]),
    ("sdxl-turbo", 4, [999, 749, 499, 249]),
    ("sdxl-lightning", 2, [999, 499]),
    ("sdxl-lightning", 8, [999, 874, 749, 624, 499, 374, 249, 124]),
    ("sdxl-lightning-1step-x0", 1, [999]),
    ("hyper-sd-nstep", 4, [999, 749, 499, 249]),
    ("tcd", 4, [999, 759, 499, 259]),
    ("hyper-sd-1step-tcd", 1, [999]),
])
def test_sdxl_noise_levels_are_the_official_timesteps(sdxl, preset, steps, timesteps):
    assert sigmas_of(sdxl, preset, steps) == expected_sigmas(timesteps)


def test_timestep_formulas_match_the_literal_lists_of_the_sources():
    assert trailing(4) == [999, 749, 499, 249]  # DMD2 README's 4-step list, SDXL-Lightning's 4 steps
    assert trailing(3) == [999, 666, 332]
    assert tcd_schedule(4) == [999, 759, 499, 259]


def test_sd_turbo_levels_for_each_step_count(sd2):
    for k in (1, 2, 3, 4):
        assert sigmas_of(sd2, "sd-turbo", k) == expected_sigmas(trailing(k))


# --- one step and k steps against the official arithmetic ----------------------------------------------------------


def test_dmd2_one_step_feeds_unit_noise_at_timestep_399(sdxl):
    assert_latent(generate(sdxl, "dmd2-sdxl-1step", 1), lcm_reference([399]), "sdxl")


def test_dmd2_four_steps_are_lcm_steps_at_999_749_499_249(sdxl):
    assert_latent(generate(sdxl, "dmd2-sdxl-4step", 4), lcm_reference([999, 749, 499, 249]), "sdxl")


def test_hyper_sdxl_one_step_unet_is_an_lcm_step_at_800(sdxl):
    assert_latent(generate(sdxl, "hyper-sdxl-1step", 1), lcm_reference([800]), "sdxl")


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sdxl_turbo_is_euler_ancestral_on_trailing_timesteps(sdxl, steps):
    assert_latent(generate(sdxl, "sdxl-turbo", steps), euler_reference(trailing(steps), ancestral=True), "sdxl")


@pytest.mark.parametrize("steps", [1, 3])
def test_sd_turbo_is_euler_on_trailing_timesteps(sd2, steps):
    assert_latent(generate(sd2, "sd-turbo", steps), euler_reference(trailing(steps)), "sd2")


@pytest.mark.parametrize("steps", [2, 4])
def test_sdxl_lightning_is_euler_on_trailing_timesteps(sdxl, steps):
    assert_latent(generate(sdxl, "sdxl-lightning", steps), euler_reference(trailing(steps)), "sdxl")


def test_sdxl_lightning_one_step_unet_output_is_read_as_x0(sdxl):
    assert_latent(generate(sdxl, "sdxl-lightning-1step-x0", 1), euler_reference([999], x0_prediction=True), "sdxl")
    assert not isinstance(sdxl.get_model_object("model_sampling"), comfy.model_sampling.X0)  # the input is untouched


@pytest.mark.parametrize(("family", "steps"), [("sdxl", 2), ("sdxl", 4), ("sd15", 8)])
def test_hyper_sd_n_step_lora_is_ddim_eta_0_on_trailing_timesteps(sdxl, sd15, family, steps):
    model = {"sdxl": sdxl, "sd15": sd15}[family]
    assert_latent(generate(model, "hyper-sd-nstep", steps), ddim_reference(steps), family)


@pytest.mark.parametrize(("preset", "gamma", "steps"),
                         [("tcd", 0.3, 4), ("tcd", 0.3, 1), ("hyper-sd-1step-tcd", 1.0, 3)])
def test_tcd_steps_follow_the_strategic_stochastic_sampler(sdxl, preset, gamma, steps):
    assert_latent(generate(sdxl, preset, steps), tcd_reference(steps, gamma), "sdxl")


def test_tcd_on_sd15_with_four_steps(sd15):
    assert_latent(generate(sd15, "tcd", 4), tcd_reference(4, 0.3), "sd15")


# --- the same through ComfyUI's stock SamplerCustom ----------------------------------------------------------------


def sampler_custom(model, sampler, sigmas) -> torch.Tensor:
    latent = {"samples": torch.zeros(LATENT_SHAPE)}
    return SamplerCustom.execute(model, True, SEED, 1.0, conditioning(), conditioning(), sampler, sigmas,
                                 latent).result[0]["samples"]


@pytest.mark.parametrize(("preset", "steps"), [
    ("dmd2-sdxl-1step", 1), ("dmd2-sdxl-4step", 4), ("hyper-sdxl-1step", 1), ("sdxl-turbo", 3),
    ("sdxl-lightning", 4), ("hyper-sd-nstep", 2), ("tcd", 4), ("hyper-sd-1step-tcd", 2),
])
def test_generate_equals_sampler_custom_with_the_onestep_sampler_and_sigmas(sdxl, preset, steps):
    sigmas = OneStepSigmas.execute(sdxl, preset, steps, 0.0).result[0]
    through_stock = sampler_custom(sdxl, OneStepSampler.execute(preset).result[0], sigmas)
    torch.testing.assert_close(through_stock, generate(sdxl, preset, steps))


@pytest.mark.parametrize(("preset", "steps", "stock"), [
    ("hyper-sd-nstep", 4, "euler"), ("hyper-sd-nstep", 8, "euler"), ("tcd", 1, "euler"), ("hyper-sdxl-1step", 1, "lcm"),
])
def test_generate_equals_a_stock_sampler_where_the_rules_coincide(sdxl, preset, steps, stock):
    """DDIM with eta 0 from unit noise at 999 is ComfyUI's euler sampler (which starts at sqrt(1 + sigma^2) z at the top
    of the schedule); one TCD step from 999 is one Euler step. Hyper-SDXL's 1-step UNet at 800 from unit noise is
    not the stock rule (sigma z below the top): the stock lcm sampler differs there, which the test shows."""
    sigmas = OneStepSigmas.execute(sdxl, preset, steps, 0.0).result[0]
    through_stock = sampler_custom(sdxl, KSamplerSelect.execute(stock).result[0], sigmas)
    if preset == "hyper-sdxl-1step":
        assert not torch.allclose(through_stock, generate(sdxl, preset, steps), rtol=1e-3, atol=1e-3)
        return
    torch.testing.assert_close(through_stock, generate(sdxl, preset, steps), rtol=1e-5, atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------------------


def test_a_dmd2_preset_on_sd15_names_the_preset_the_family_and_the_presets_to_use(sd15):
    with pytest.raises(PresetError, match=r"OneStep Generate: preset 'dmd2-sdxl-1step' is for DMD2 SDXL 1-step UNet "
                                          r"\(SDXL\); this model is SD1\.5 .*use 'hyper-sd-nstep', .*'sid-lsg'"):
        generate(sd15, "dmd2-sdxl-1step", 1)


def test_a_four_step_preset_with_one_step_says_which_steps_and_which_preset(sdxl):
    with pytest.raises(PresetError, match=r"OneStep Sigmas: preset 'dmd2-sdxl-4step' .* runs exactly 4 steps, not 1\. "
                                          r"Set steps to 4; for one step use the 1-step UNet with 'dmd2-sdxl-1step'"):
        OneStepSigmas.execute(sdxl, "dmd2-sdxl-4step", 1, 0.0)


def test_sd_turbo_on_sdxl_points_to_the_sdxl_presets(sdxl):
    with pytest.raises(PresetError, match=r"preset 'sd-turbo' is for SD-Turbo \(SD2\.x\); this model is SDXL .*"
                                          r"'sdxl-turbo'"):
        OneStepSigmas.execute(sdxl, "sd-turbo", 1, 0.0)


def test_the_x0_unet_through_sampler_custom_without_x0_sampling_is_refused(sdxl):
    sigmas = OneStepSigmas.execute(sdxl, "sdxl-lightning-1step-x0", 1, 0.0).result[0]
    with pytest.raises(PresetError, match="OneStep Sampler: SDXL-Lightning's 1-step UNet predicts x0.*"
                                          "ModelSamplingDiscrete node \\(sampling 'x0'\\)"):
        sampler_custom(sdxl, OneStepSampler.execute("sdxl-lightning-1step-x0").result[0], sigmas)


def test_an_x0_file_sampled_with_an_epsilon_preset_is_refused(sdxl):
    student = sdxl.clone()
    student.model_options[STUDENT_INFO_KEY] = info_from_file_name("sdxl_lightning_1step_unet_x0.safetensors", None)
    with pytest.raises(PresetError, match="predicts x0 .* preset 'sdxl-lightning' would read its output as noise. "
                                          "Use 'sdxl-lightning-1step-x0' or 'auto'"):
        generate(student, "sdxl-lightning", 2)
    assert_latent(generate(student, "auto", 1), euler_reference([999], x0_prediction=True), "sdxl")


@pytest.mark.parametrize(("name", "preset", "steps"), [
    ("dmd2_sdxl_1step_unet_fp16.safetensors", "dmd2-sdxl-1step", 1),
    ("dmd2_sdxl_4step_unet_fp16.safetensors", "dmd2-sdxl-4step", 4),
    ("sdxl_lightning_1step_unet_x0.safetensors", "sdxl-lightning-1step-x0", 1),
    ("sdxl_lightning_4step_unet.safetensors", "sdxl-lightning", 4),
    ("Hyper-SDXL-1step-Unet.safetensors", "hyper-sdxl-1step", 1),
    ("Hyper-SDXL-8steps-lora.safetensors", "hyper-sd-nstep", 8),
    ("sd_xl_turbo_1.0_fp16.safetensors", "sdxl-turbo", None),
    ("sd_turbo.safetensors", "sd-turbo", None),
    ("sid_lsg_sd15_cfg1.5.safetensors", None, None),
])
def test_auto_recognises_the_released_file_names(name, preset, steps):
    info = info_from_file_name(name, None)
    assert (info.preset, info.steps) == (preset, steps) if preset else info is None


def test_auto_with_a_recognised_four_step_file_and_steps_1_says_to_set_4(sdxl):
    student = sdxl.clone()
    student.model_options[STUDENT_INFO_KEY] = StudentInfo(preset="sdxl-lightning", steps=4)
    with pytest.raises(PresetError, match="This file is the 4-step release: set steps to 4"):
        generate(student, "auto", 1)


def test_auto_without_a_student_file_lists_the_family_presets(sdxl, sd15):
    """A stock loader passes on no file name: auto sampled an SDXL-Turbo checkpoint, an SD-Turbo one or a DMD2 LoRA
    at SiD-LSG's timestep 625. It stops instead and names the presets of the model's family; the chosen preset runs."""
    with pytest.raises(PresetError, match=r"cannot tell which student this SDXL model .* does not pass on the file's "
                                          r"name. Choose the student's preset \('sdxl-turbo', 'dmd2-sdxl-1step', "):
        generate(sdxl, "auto", 1)
    with_lora = sd15.clone()
    weight = sd15.model.diffusion_model.unused  # the toy network's one weight
    assert with_lora.add_patches({"diffusion_model.unused": ("diff", (torch.zeros_like(weight),))})  # as LoRAs are
    with pytest.raises(PresetError, match=r"SD1.5 model .* patched \(a LoRA .*\('hyper-sd-nstep', "
                                          r"'hyper-sd-1step-tcd', 'tcd', 'sid-lsg'; README table\)"):
        generate(with_lora, "auto", 1)
    torch.testing.assert_close(generate(with_lora, "tcd", 4), generate(sd15, "tcd", 4))  # a zero LoRA


def test_first_sigma_of_a_four_step_student_needs_no_step_count(sdxl):
    """Where sampling starts (PuLID's step window asks only that): the 4-step DMD2 preset's 999."""
    from onestep.nodes.presets import first_sigma

    student = sdxl.clone()
    student.model_options[STUDENT_INFO_KEY] = StudentInfo(preset="dmd2-sdxl-4step", steps=4)
    assert first_sigma("test", student) == pytest.approx(sigma_of(999), rel=2e-5)
