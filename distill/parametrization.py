"""Noise parametrisations: the EDM / variance-exploding view and the discrete DDPM view.

Everything in ``distill`` speaks one language: a denoiser ``D(x, sigma, cond) -> x0`` in the VE view,
``x_t = x0 + sigma * eps`` (Karras et al. 2022, "EDM", §2). A variance-preserving model sees
``x_vp = x_t / sqrt(1 + sigma^2)`` and the timestep whose ``sigma_t = sqrt((1 - abar_t) / abar_t)``
is nearest; the adapters below do that translation so the losses never need to know.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor, Any], Tensor]
"""``D(x, sigma, cond) -> x0``: x in the VE view, sigma broadcastable to x (usually [B, 1, ..., 1])."""


def append_dims(t: Tensor, ndim: int) -> Tensor:
    """Append singleton dims to a per-sample tensor until it has ``ndim`` dims."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A per-sample sigma of shape [B, 1, ..., 1] that broadcasts against x."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return append_dims(sigma.reshape(x.shape[0]), x.ndim)


# --- conversions in the VE view --------------------------------------------------------------


def eps_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """Noise implied by a clean estimate: eps = (x_t - x0) / sigma (EDM §2, x_t = x0 + sigma eps)."""
    return (x_t - x0) / sigma


def x0_from_eps(x_t: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """Clean estimate from predicted noise: x0 = x_t - sigma * eps."""
    return x_t - sigma * eps


def vp_input_scale(sigma: Tensor) -> Tensor:
    """Factor taking VE x_t to the VP model input: 1 / sqrt(1 + sigma^2) (= sqrt(abar))."""
    return (1 + sigma**2).rsqrt()


def v_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """v-target (Salimans & Ho 2022, §4): v = sqrt(abar) eps - sqrt(1 - abar) x0, sigma in VE terms."""
    eps = eps_from_x0(x_t, x0, sigma)
    return (eps - sigma * x0) * vp_input_scale(sigma)


def x0_from_v(x_t: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """Clean estimate from v: x0 = sqrt(abar) x_vp - sqrt(1 - abar) v, with x_vp = x_t sqrt(abar)."""
    scale = vp_input_scale(sigma)
    return x_t * scale**2 - sigma * scale * v


def score_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """Score of the noisy marginal from a denoiser (Tweedie): s = (D(x_t) - x_t) / sigma^2."""
    return (x0 - x_t) / sigma**2


# --- the discrete DDPM view ------------------------------------------------------------------


def scaled_linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled_linear" table: betas = linspace(sqrt(b0), sqrt(b1), T)^2, abar = cumprod(1 - beta)."""
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02) -> Tensor:
    """DDPM's "linear" table (Ho et al. 2020; PixArt-alpha's): betas = linspace(b0, b1, T), abar = cumprod(1 - beta)."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


DDPM_TABLES = {"sd": scaled_linear_alphas_cumprod, "pixart": linear_alphas_cumprod}
"""The DDPM alpha-bar tables a teacher may have: SD1.x/2.x/SDXL ("scaled_linear") and PixArt-alpha ("linear")."""


class DiscreteSchedule:
    """A discrete VP schedule seen in VE terms: ``sigma_t = sqrt((1 - abar_t) / abar_t)``."""

    def __init__(self, alphas_cumprod: Tensor | None = None):
        """``alphas_cumprod``: the table, or None for Stable Diffusion's (``DiscreteSchedule.named``: by name)."""
        abar = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
        self.alphas_cumprod = abar
        self.sigmas = ((1 - abar) / abar).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def named(cls, table: str) -> DiscreteSchedule:
        if table not in DDPM_TABLES:
            raise ValueError(f"ddpm_table must be one of {tuple(DDPM_TABLES)}, got {table!r}")
        return cls(DDPM_TABLES[table]())

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0]

    def sigma(self, t: Tensor | int) -> Tensor:
        """sigma of integer timestep(s) t."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self.sigmas[t.cpu()].float().to(t.device)

    def timestep(self, sigma: Tensor | float) -> Tensor:
        """Nearest integer timestep to sigma, nearest in log-sigma (as ComfyUI's ``timestep(sigma)``)."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.detach().double().cpu().log().reshape(-1, 1)
        t = (log_sigma - self.log_sigmas.reshape(1, -1)).abs().argmin(dim=1)
        return t.reshape(sigma.shape).to(sigma.device)


# --- adapters to the denoiser interface ------------------------------------------------------


def _model_time(sigma: Tensor, schedule: DiscreteSchedule | None) -> Tensor:
    """The model's time input, shape [B]: the nearest integer timestep, or sigma itself."""
    sigma = sigma.reshape(sigma.shape[0])
    return sigma if schedule is None else schedule.timestep(sigma)


def denoiser_from_eps_model(eps_fn: Callable, schedule: DiscreteSchedule | None = None) -> Denoiser:
    """Wrap ``eps_fn(x_vp, time, cond) -> eps`` (a VP epsilon-prediction model) as ``D(x, sigma, cond)``.

    ``time`` is the nearest integer timestep when a discrete ``schedule`` is given, else sigma itself.
    """

    def denoise(x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        sigma = per_sample(sigma, x)
        eps = eps_fn(x * vp_input_scale(sigma), _model_time(sigma, schedule), cond)
        return x0_from_eps(x, eps, sigma)

    return denoise


def denoiser_from_v_model(v_fn: Callable, schedule: DiscreteSchedule | None = None) -> Denoiser:
    """Wrap ``v_fn(x_vp, time, cond) -> v`` (a VP v-prediction model) as ``D(x, sigma, cond)``."""

    def denoise(x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        sigma = per_sample(sigma, x)
        v = v_fn(x * vp_input_scale(sigma), _model_time(sigma, schedule), cond)
        return x0_from_v(x, v, sigma)

    return denoise


def one_step_generate(generator: Denoiser, z: Tensor, init_sigma: float, cond: Any = None) -> Tensor:
    """SiD's one-step generator: x = G(init_sigma * z, init_sigma, cond) (SiD, §4; 2.5 for EDM models)."""
    return generator(init_sigma * z, per_sample(init_sigma, z), cond)
