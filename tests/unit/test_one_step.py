"""The pure one-step sampler, on a denoiser whose answer is known in closed form."""

import pytest
import torch
from onestep.distill.one_step import (
    ancestral_levels,
    euler_levels,
    fresh_noise,
    multistep_levels,
    multistep_timesteps,
    renoise_levels,
    sample_one_step,
    tcd_timesteps,
    trailing_timesteps,
)


def gaussian_denoiser(x, sigma, **_):
    """Exact x0-denoiser for data ~ N(0, 1): E[x0 | x0 + sigma * eps = x] = x / (1 + sigma^2)."""
    return x / (1 + sigma.view(-1, *[1] * (x.ndim - 1)) ** 2)


def test_one_step_returns_the_denoiser_output_at_the_first_level():
    z = torch.randn(3, 4, 5, 5, generator=torch.manual_seed(0))
    x = 2.5 * z
    out = sample_one_step(gaussian_denoiser, x, torch.tensor([2.5, 0.0]))
    torch.testing.assert_close(out, 2.5 * z / (1 + 2.5**2))


def test_k_steps_visit_each_level_and_renoise_in_between():
    calls, renoised = [], []

    def recording_denoiser(x, sigma, **_):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    def renoise(sigma, noise, x0):
        renoised.append(float(sigma))
        return x0 + sigma * noise

    sigmas = torch.tensor([2.5, 1.5, 0.5, 0.0])
    x = 2.5 * torch.randn(2, 3, 4, 4, generator=torch.manual_seed(1))
    sample_one_step(recording_denoiser, x, sigmas, extra_args={"seed": 5}, renoise=renoise)
    assert calls == pytest.approx([2.5, 1.5, 0.5])
    assert renoised == pytest.approx([1.5, 0.5])


def test_callback_sees_every_step_with_its_denoised_output():
    seen = []
    sample_one_step(gaussian_denoiser, torch.ones(1, 1, 2, 2), torch.tensor([2.0, 1.0, 0.0]),
                    callback=lambda info: seen.append((info["i"], float(info["sigma"]))))
    assert seen == [(0, 2.0), (1, 1.0)]


def test_fresh_noise_is_reproducible_and_differs_between_steps_and_seeds():
    like = torch.zeros(2, 4, 8, 8)
    torch.testing.assert_close(fresh_noise(like, 3, 0), fresh_noise(like, 3, 0))
    assert not torch.allclose(fresh_noise(like, 3, 0), fresh_noise(like, 3, 1))
    assert not torch.allclose(fresh_noise(like, 3, 0), fresh_noise(like, 4, 0))
    assert abs(float(fresh_noise(torch.zeros(100_000), 1, 0).std()) - 1.0) < 0.02


def test_multistep_levels_follow_the_k_step_rule_on_a_continuous_scale():
    assert multistep_levels(2.5, 1) == [2.5]
    assert multistep_levels(2.5, 4) == pytest.approx([2.5, 1.875, 1.25, 0.625])
    with pytest.raises(ValueError, match="at least 1"):
        multistep_levels(625, 0)


def test_multistep_timesteps_are_the_official_integer_timesteps():
    """The official SiD-LSG sampler: int(625 * (1 - i/k)) after 625 (DESIGN 3c: 468, 312, 416 in k = 2, 3, 4)."""
    assert multistep_timesteps(625, 1) == [625]
    assert multistep_timesteps(625, 2) == [625, 312]
    assert multistep_timesteps(625, 3) == [625, 416, 208]
    assert multistep_timesteps(625, 4) == [625, 468, 312, 156]


def test_trailing_and_tcd_timesteps_are_the_lists_of_the_official_pipelines():
    """DMD2 README: 999, 749, 499, 249; trailing spacing for SDXL-Lightning 8 steps; TCD's 4 steps (diffusers)."""
    assert trailing_timesteps(1) == [999] and trailing_timesteps(4) == [999, 749, 499, 249]
    assert trailing_timesteps(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    assert tcd_timesteps(1) == [999] and tcd_timesteps(4) == [999, 759, 499, 259]


def test_ancestral_levels_are_k_diffusions_ancestral_step():
    """sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2), sigma_down = sqrt(s_to^2 - sigma_up^2) (eta 1)."""
    sigma, sigma_next = torch.tensor(14.6), torch.tensor(4.1)
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    kept, fresh = ancestral_levels(sigma, sigma_next)
    torch.testing.assert_close(fresh, sigma_up)
    torch.testing.assert_close(kept, (sigma_next**2 - sigma_up**2) ** 0.5)


@pytest.mark.parametrize("levels", [renoise_levels, euler_levels, ancestral_levels])
def test_every_rule_lands_on_the_next_noise_level(levels):
    """kept^2 + fresh^2 = sigma_next^2: the next sample has the noise level of the next step."""
    kept, fresh = levels(torch.tensor(3.0), torch.tensor(1.2))
    torch.testing.assert_close(kept**2 + fresh**2, torch.tensor(1.44))


def test_the_euler_rule_keeps_the_predicted_noise_and_adds_none():
    z = torch.randn(1, 2, 3, 3, generator=torch.manual_seed(2))
    out = sample_one_step(gaussian_denoiser, 3.0 * z, torch.tensor([3.0, 1.0, 0.0]), levels=euler_levels)
    x0 = 3.0 * z / 10.0
    x1 = x0 + 1.0 * (3.0 * z - x0) / 3.0  # x0 + sigma_next * eps_hat
    torch.testing.assert_close(out, x1 / 2.0)
