"""One-step (and few-step) generation from SiD / SiD-LSG / SIM students, in k-diffusion's sampler form.

A student is a denoiser ``D(x, sigma) -> x0`` trained to map ``x = sigma_init * z`` straight to an
image. With ``k > 1`` steps, SiD-LSG re-noises each x0 with fresh noise at the timesteps
``t_init * (1 - i/k)`` and denoises again (Zhou et al. 2024, arXiv 2406.01561, Sec. 4).
"""

from collections.abc import Callable

import torch

SIGMA_INIT_EDM = 2.5
"""SiD's generator input noise level: x = G(2.5 z, sigma=2.5) (Zhou et al. 2024, arXiv 2404.04057)."""

TIMESTEP_INIT_SID_LSG = 625
"""SiD-LSG's generator timestep on the SD1.x/2.x DDPM schedule (Zhou et al. 2024, arXiv 2406.01561)."""

Renoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepLevels = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(sigma, sigma_next) -> (kept, fresh): the next sample is x0 + kept * eps_hat + fresh * new noise, with
kept^2 + fresh^2 = sigma_next^2 (eps_hat = (x - x0) / sigma, the noise the step's own prediction implies)."""


def multistep_levels(start: float, steps: int) -> list[float]:
    """Levels start * (1 - i/k), i = 0..k-1: the k-step rule on a continuous noise scale (sigma itself)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [start * (1.0 - i / steps) for i in range(steps)]


def multistep_timesteps(start: float, steps: int) -> list[float]:
    """SiD-LSG's k-step timesteps int(t_init (1 - i/k)), i = 1..k-1, after t_init (official sampler, arXiv
    2406.01561): 625, 468, 312, 156 for k = 4."""
    return [start] + [float(int(level)) for level in multistep_levels(start, steps)[1:]]


def trailing_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """'trailing' spacing (Lin et al. 2023, arXiv 2305.08891, Table 2; diffusers ``timestep_spacing="trailing"``):
    round(train_steps - i * train_steps / k) - 1, i = 0..k-1, e.g. 999, 749, 499, 249 for k = 4."""
    return [round(train_steps - i * train_steps / steps) - 1 for i in range(steps)]


def tcd_timesteps(steps: int, original_steps: int = 50, train_steps: int = 1000) -> list[int]:
    """TCD's inference timesteps (diffusers TCDScheduler.set_timesteps at strength 1): the ``original_steps``
    timesteps c * j - 1 (c = train_steps // original_steps), from the top, at indices floor(i * original_steps / k)."""
    c = train_steps // original_steps
    return [train_steps - 1 - c * int(i * original_steps / steps) for i in range(steps)]


def renoise_levels(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 plus fresh noise at the next level: SiD-LSG's k-step rule, and LCM's multistep step (Luo et al. 2023,
    arXiv 2310.04378, Alg. 3; diffusers LCMScheduler.step), which DMD2 and Hyper-SD's 1-step UNet use."""
    return torch.zeros_like(sigma_next), sigma_next


def euler_levels(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep all of the predicted noise, add none: an Euler step of the probability-flow ODE in the variance-exploding
    view (Karras et al. 2022, arXiv 2206.00364, Alg. 1 without churn), which is also DDIM with eta 0 (Song et al. 2021,
    arXiv 2010.02502, eq. 12)."""
    return sigma_next, torch.zeros_like(sigma_next)


def ancestral_levels(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler ancestral (k-diffusion's get_ancestral_step at eta 1; diffusers EulerAncestralDiscreteScheduler):
    sigma_up = sigma_next sqrt(sigma^2 - sigma_next^2) / sigma, sigma_down = sqrt(sigma_next^2 - sigma_up^2),
    which simplifies to sigma_next^2 / sigma."""
    fresh = sigma_next * (sigma**2 - sigma_next**2).clamp(min=0).sqrt() / sigma
    return sigma_next**2 / sigma, fresh


def renoise_variance_exploding(sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """x_t = x0 + sigma * eps: the forward process in the variance-exploding view."""
    return x0 + sigma * noise


def fresh_noise(like: torch.Tensor, seed: int | None, step: int) -> torch.Tensor:
    """Noise for re-noising step ``step``, reproducible from the sampling seed and independent of the initial noise."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed((0 if seed is None else int(seed)) * 1_000_003 + step + 1)
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like)


@torch.no_grad()
def sample_one_step(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable: bool | None = None,
    renoise: Renoise = renoise_variance_exploding,
    levels: StepLevels = renoise_levels,
) -> torch.Tensor:
    """One-step generation, or k steps with fresh-noise re-injection (SiD-LSG, arXiv 2406.01561).

    ``x`` is the noise already scaled to ``sigmas[0]``; each step returns the student's x0 and, unless
    the next noise level is zero, moves it to that level: ``levels`` says how much of the step's own predicted
    noise it keeps and how much new noise ``renoise`` adds (by default none kept, all new).
    """
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    sigma_batch = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * sigma_batch, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = next_sample(x, denoised, sigmas[i], sigmas[i + 1], levels, renoise, lambda: fresh_noise(denoised, seed, i))
    return x


def next_sample(x, denoised, sigma, sigma_next, levels: StepLevels, renoise: Renoise, noise: Callable) -> torch.Tensor:
    """x0 + kept * eps_hat, re-noised by ``fresh`` (see StepLevels); x0 itself when sigma_next is 0."""
    if sigma_next <= 0:
        return denoised
    kept, fresh = levels(sigma, sigma_next)
    base = denoised if kept <= 0 else denoised + kept * (x - denoised) / sigma
    return renoise(fresh, noise(), base) if fresh > 0 else base
