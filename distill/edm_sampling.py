"""Deterministic EDM samplers in k-diffusion's form ``(model, x, sigmas, extra_args, callback, disable)``.

``model(x, sigma, **extra_args) -> x0`` with sigma of shape [B]; ``x`` is the noise already scaled to
``sigmas[0]``. Heun with 18 steps on the rho = 7 schedule is EDM's 35-NFE setting (Karras et al. 2022,
Algorithm 1, S_churn = 0); one Euler step from sigma_max is the teacher's 1-NFE baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .noise_levels import karras_sigma


def edm_sigmas(steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """The ``steps`` levels of the rho schedule from sigma_max down to sigma_min, then 0 (EDM Eq. 5)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return torch.cat([karras_sigma(ramp, sigma_min, sigma_max, rho), ramp.new_zeros(1)]).float()


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's dx/dsigma = (x - D(x)) / sigma (EDM Eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def heun_nfe(sigmas: Tensor) -> int:
    """Network evaluations of ``sample_heun`` over ``sigmas``: two per step, one on the last step to 0."""
    steps = len(sigmas) - 1
    return 2 * steps - int(sigmas[-1] == 0)


@torch.no_grad()
def sample_heun(
    model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None, callback: Callable | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, S_churn = 0)."""
    extra_args = {} if extra_args is None else extra_args
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        d = to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = to_d(x_next, sigma_next, model(x_next, sigma_next * ones, **extra_args))
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x


@torch.no_grad()
def sample_euler(
    model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None, callback: Callable | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Eq. 3); one step to 0 returns D(x)."""
    extra_args = {} if extra_args is None else extra_args
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (sigmas[i + 1] - sigmas[i]) * to_d(x, sigmas[i], denoised)
    return x
