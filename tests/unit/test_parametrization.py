"""VE/VP conversions, the SD discrete schedule, and the eps / v adapters to D(x, sigma, cond)."""

import math

import pytest
import torch
from onestep.distill.parametrization import (
    DiscreteSchedule,
    denoiser_from_eps_model,
    denoiser_from_v_model,
    eps_from_x0,
    one_step_generate,
    per_sample,
    score_from_x0,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)


@pytest.fixture
def sd():
    return DiscreteSchedule()


def test_sd_schedule_matches_the_known_sigmas(sd):
    # SD1.x "scaled_linear": sigma_min 0.0292, sigma_max 14.6146, and ComfyUI's sigma(625) = 2.5017
    assert sd.num_steps == 1000
    assert float(sd.sigma(0)) == pytest.approx(0.0292, abs=1e-4)
    assert float(sd.sigma(999)) == pytest.approx(14.6146, abs=1e-4)
    assert float(sd.sigma(625)) == pytest.approx(2.5017, abs=1e-4)
    assert (sd.sigmas.diff() > 0).all()


def test_timestep_is_the_nearest_step_and_inverts_sigma(sd):
    t = torch.arange(1000)
    assert torch.equal(sd.timestep(sd.sigma(t)), t)
    assert int(sd.timestep(2.5)) == 625
    assert int(sd.timestep(1e-6)) == 0 and int(sd.timestep(1e6)) == 999


def test_eps_and_x0_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    sigma = per_sample(torch.tensor([0.3, 7.0, 2.5, 0.01], dtype=torch.float64), x0)
    x_t = x0 + sigma * eps
    torch.testing.assert_close(eps_from_x0(x_t, x0, sigma), eps)
    torch.testing.assert_close(x0_from_eps(x_t, eps, sigma), x0)
    torch.testing.assert_close(score_from_x0(x_t, x0, sigma), -eps / sigma)


def test_v_matches_the_vp_definition_and_round_trips(sd):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500, 990])
    abar = sd.alphas_cumprod[t].reshape(-1, 1)
    sigma = ((1 - abar) / abar).sqrt()
    v_vp = abar.sqrt() * eps - (1 - abar).sqrt() * x0  # Salimans & Ho's v, written in VP terms
    x_t = x0 + sigma * eps
    torch.testing.assert_close(v_from_x0(x_t, x0, sigma), v_vp)
    torch.testing.assert_close(x0_from_v(x_t, v_vp, sigma), x0)


def _point_mass_models(sd, a):
    """Exact eps- and v-prediction VP models for data that is always ``a``; they record their inputs."""
    seen = {}

    def alphas(t):
        return sd.alphas_cumprod[t].float().reshape(-1, 1)

    def eps_model(x_vp, t, cond):
        seen["x_vp"], seen["t"], seen["cond"] = x_vp, t, cond
        abar = alphas(t)
        return (x_vp - abar.sqrt() * a) / (1 - abar).sqrt()

    def v_model(x_vp, t, cond):
        abar = alphas(t)
        eps = (x_vp - abar.sqrt() * a) / (1 - abar).sqrt()
        return abar.sqrt() * eps - (1 - abar).sqrt() * a

    return eps_model, v_model, seen


def test_adapters_turn_vp_models_into_ve_denoisers(sd):
    a = torch.tensor([[0.5, -1.0, 2.0]])
    eps_model, v_model, seen = _point_mass_models(sd, a)
    t = torch.tensor([20, 625, 980])
    sigma = sd.sigma(t)
    x = a + sigma.reshape(-1, 1) * torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        denoiser_from_eps_model(eps_model, sd)(x, sigma, "c"), a.expand(3, 3), atol=2e-5, rtol=1e-5
    )
    assert torch.equal(seen["t"], t) and seen["cond"] == "c"
    torch.testing.assert_close(seen["x_vp"], x / (1 + sigma.reshape(-1, 1) ** 2).sqrt())
    torch.testing.assert_close(denoiser_from_v_model(v_model, sd)(x, sigma, None), a.expand(3, 3), atol=2e-5, rtol=1e-5)


def test_continuous_adapter_passes_sigma_through():
    received = {}

    def eps_model(x_vp, time, cond):
        received["time"] = time
        return torch.zeros_like(x_vp)

    x = torch.ones(2, 3)
    out = denoiser_from_eps_model(eps_model)(x, torch.tensor([0.5, 2.0]), None)
    torch.testing.assert_close(received["time"].flatten(), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out, x)


def test_one_step_generate_feeds_scaled_noise_at_init_sigma():
    received = {}

    def generator(x, sigma, cond):
        received.update(x=x, sigma=sigma, cond=cond)
        return x

    z = torch.randn(4, 1, 2, 2)
    one_step_generate(generator, z, 2.5, cond="label")
    torch.testing.assert_close(received["x"], 2.5 * z)
    assert received["sigma"].shape == (4, 1, 1, 1) and (received["sigma"] == 2.5).all()
    assert received["cond"] == "label"


def test_sigma_625_is_the_sd_lsg_generator_level(sd):
    """SiD-LSG's UNet input sqrt(1 - abar_625) z is the VE input sigma(625) z scaled to VP."""
    abar = float(sd.alphas_cumprod[625])
    sigma = float(sd.sigma(625))
    assert sigma / math.sqrt(1 + sigma**2) == pytest.approx(math.sqrt(1 - abar), rel=1e-6)
