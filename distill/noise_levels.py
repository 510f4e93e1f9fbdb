"""Noise levels at which the fake score is trained and the generator is scored.

EDM view: the fake score sees sigma ~ exp(N(-1.2, 1.2)) (EDM's training distribution) times sigma_data / 0.5; the
generator loss sees the lower part of the Karras rho=7 sampling schedule, u ~ U(0, tmax/1000) mapped to
sigma(1 - u), which for tmax = 800 spans 0.002 .. 24.4 (the SiD reference implementation's choice).
DDPM view: integer timesteps t ~ U{20..980} for both steps (SiD-LSG), on the teacher's own alpha-bar table.
All draws take an explicit ``torch.Generator`` so that a resumed run repeats the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .parametrization import DiscreteSchedule


def _device(generator: torch.Generator | None, device) -> torch.device:
    """Where the result goes: ``device`` if given, else the generator's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where the draw happens: a generator only draws on its own device."""
    return generator.device if generator is not None else device


EDM_SIGMA_DATA = 0.5
"""The data scale EDM's training law N(-1.2, 1.2^2) was tuned for (Karras et al. 2022, Table 1)."""


def edm_training_sigmas(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device=None,
    sigma_data: float = EDM_SIGMA_DATA,
) -> Tensor:
    """EDM training noise levels, ln(sigma / s) ~ N(P_mean, P_std^2) with s = sigma_data / 0.5 (Karras et al. 2022,
    Table 1, where sigma_data = 0.5 and s = 1; the law scales with the data so that it sees the same noise-to-signal
    ratios at any sigma_data)."""
    dev = _device(generator, device)
    normal = torch.randn(n, generator=generator, device=_draw_device(generator, dev))
    return ((normal * p_std + p_mean).exp() * (sigma_data / EDM_SIGMA_DATA)).to(dev)


def karras_sigma(ramp: Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Karras schedule at ramp position in [0, 1]: (max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho (EDM Eq. 5)."""
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sid_generator_sigmas(
    n: int,
    tmax: float = 800,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """SiD generator noise levels: u ~ U(0, tmax/1000), sigma = karras_sigma(1 - u) (SiD reference code, tmax = 800)."""
    dev = _device(generator, device)
    u = torch.rand(n, generator=generator, device=_draw_device(generator, dev)) * (tmax / 1000)
    return karras_sigma(1 - u, sigma_min, sigma_max, rho).to(dev)


def sid_generator_sigma_range(
    tmax: float = 800, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> tuple[float, float]:
    """The interval ``sid_generator_sigmas`` draws from (0.002 .. 24.4 for the defaults)."""
    lo = karras_sigma(torch.tensor(1.0, dtype=torch.float64), sigma_min, sigma_max, rho)
    hi = karras_sigma(torch.tensor(1 - tmax / 1000, dtype=torch.float64), sigma_min, sigma_max, rho)
    return float(lo), float(hi)


def ddpm_timesteps(
    n: int, t_min: int = 20, t_max: int = 980, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """Integer timesteps t ~ U{t_min .. t_max}, both ends included (SiD-LSG, arXiv 2406.01561)."""
    dev = _device(generator, device)
    t = torch.randint(t_min, t_max + 1, (n,), generator=generator, device=_draw_device(generator, dev))
    return t.to(dev)


@dataclass
class NoiseLevels:
    """The two noise-level draws of one distillation run, in either view ("edm" or "ddpm")."""

    view: str = "edm"
    sigma_data: float = EDM_SIGMA_DATA
    p_mean: float = -1.2
    p_std: float = 1.2
    tmax: float = 800
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    t_min: int = 20
    t_max: int = 980
    schedule: DiscreteSchedule | None = None

    def __post_init__(self):
        if self.view not in ("edm", "ddpm"):
            raise ValueError(f"noise view must be 'edm' or 'ddpm', got {self.view!r}")
        if self.view == "ddpm" and self.schedule is None:
            self.schedule = DiscreteSchedule()

    def _ddpm_sigmas(self, n: int, generator, device) -> Tensor:
        t = ddpm_timesteps(n, self.t_min, self.t_max, generator, device)
        return self.schedule.sigma(t).to(device)

    def fake_score_sigmas(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Noise levels for the fake-score step."""
        if self.view == "ddpm":
            return self._ddpm_sigmas(n, generator, _device(generator, device))
        return edm_training_sigmas(n, self.p_mean, self.p_std, generator, device, self.sigma_data)

    def generator_sigmas(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Noise levels for the generator step."""
        if self.view == "ddpm":
            return self._ddpm_sigmas(n, generator, _device(generator, device))
        return sid_generator_sigmas(n, self.tmax, self.sigma_min, self.sigma_max, self.rho, generator, device)
