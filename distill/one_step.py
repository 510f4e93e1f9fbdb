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


def multistep_levels(start: float, steps: int) -> list[float]:
    """Levels start * (1 - i/k), i = 0..k-1: the k-step rule on a continuous noise scale (sigma itself)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [start * (1.0 - i / steps) for i in range(steps)]


def multistep_timesteps(start: float, steps: int) -> list[float]:
    """SiD-LSG's k-step timesteps int(t_init (1 - i/k)), i = 1..k-1, after t_init (official sampler, arXiv
    2406.01561): 625, 468, 312, 156 for k = 4."""
    return [start] + [float(int(level)) for level in multistep_levels(start, steps)[1:]]


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
) -> torch.Tensor:
    """One-step generation, or k steps with fresh-noise re-injection (SiD-LSG, arXiv 2406.01561).

    ``x`` is the noise already scaled to ``sigmas[0]``; each step returns the student's x0 and, unless
    the next noise level is zero, re-noises it to that level with new noise.
    """
    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed")
    sigma_batch = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * sigma_batch, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] > 0:
            x = renoise(sigmas[i + 1], fresh_noise(denoised, seed, i), denoised)
        else:
            x = denoised
    return x
