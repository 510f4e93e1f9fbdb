"""Noise-level draws: the laws, their ranges, and reproducibility from a seeded generator."""

import math

import pytest
import torch
from onestep.distill.noise_levels import (
    NoiseLevels,
    ddpm_timesteps,
    edm_training_sigmas,
    karras_sigma,
    sid_generator_sigma_range,
    sid_generator_sigmas,
)
from onestep.distill.parametrization import DiscreteSchedule

N = 200_000


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_edm_training_sigmas_are_lognormal():
    log_sigma = edm_training_sigmas(N, generator=seeded()).log()
    standard_error = 1.2 / math.sqrt(N)
    assert abs(log_sigma.mean().item() + 1.2) < 5 * standard_error
    assert abs(log_sigma.std().item() - 1.2) < 0.01


def test_karras_schedule_endpoints():
    assert float(karras_sigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(80.0)
    assert float(karras_sigma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.002)


def test_sid_generator_sigmas_cover_the_lower_karras_range():
    lo, hi = sid_generator_sigma_range()
    assert lo == pytest.approx(0.002) and hi == pytest.approx(24.4, abs=0.05)  # SiD's tmax = 800
    sigma = sid_generator_sigmas(N, generator=seeded())
    assert sigma.min() >= lo and sigma.max() <= hi
    assert sigma.min() < 0.003 and sigma.max() > 23  # both ends are reached
    # u ~ U(0, 0.8) is uniform on the rho-ramp: sigma^(1/7) is uniform between the ends
    ramp = sigma.double() ** (1 / 7)
    assert abs(ramp.mean().item() - (lo ** (1 / 7) + hi ** (1 / 7)) / 2) < 0.005


def test_ddpm_timesteps_are_uniform_integers_with_both_ends():
    t = ddpm_timesteps(N, generator=seeded())
    assert t.dtype == torch.long and t.min() == 20 and t.max() == 980
    assert abs(t.double().mean().item() - 500) < 1.5


def test_draws_repeat_from_the_same_seed():
    assert torch.equal(sid_generator_sigmas(8, generator=seeded(3)), sid_generator_sigmas(8, generator=seeded(3)))
    assert not torch.equal(sid_generator_sigmas(8, generator=seeded(3)), sid_generator_sigmas(8, generator=seeded(4)))


def test_noise_levels_by_view():
    edm = NoiseLevels("edm")
    assert edm.generator_sigmas(1000, seeded()).max() <= sid_generator_sigma_range()[1]
    ddpm = NoiseLevels("ddpm")
    table = DiscreteSchedule().sigmas.float()
    for draw in (ddpm.fake_score_sigmas(64, seeded()), ddpm.generator_sigmas(64, seeded())):
        assert torch.isin(draw, table[20:981]).all()
    with pytest.raises(ValueError, match="view"):
        NoiseLevels("vp")
