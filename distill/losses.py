"""Losses of score-based one-step distillation: fake score, SiD, SiD-LSG guidance, SIM.

Every loss takes tensors (network outputs, clean samples, sigma) and returns one value per sample,
shape [B], summed over the non-batch dims; the trainer averages over the batch. Denoisers return x0
(VE view, ``x_t = x0 + sigma * eps``), so scores are ``s(x_t) = (D(x_t) - x_t) / sigma^2``.
Notation: ``x_g`` generator sample (x0), ``y_real = D_phi(x_t)`` teacher, ``y_fake = D_psi(x_t)``
fake score.

SIM surrogate (Luo et al. 2024, arXiv 2410.16794, §3.2-3.3), worked out in denoiser form
-----------------------------------------------------------------------------------------
Divergence: ``Div(theta) = E_t w(t) E_{x_t ~ pi_t} d(y(x_t))`` with ``y = s_p - s_q_theta`` and the
sampling law ``pi_t`` held at the current generator distribution (stop-gradient): only the score
``s_q_theta`` moves, so ``grad Div = -E_q[u . d_theta s_q]`` with ``u = d'(y)`` frozen as a function.

1. Integration by parts, for every theta: ``E_q[u . s_q] = -E_q[div u]``. Differentiating it,
   ``E_q[u . d_theta s_q] = -d_theta E_{x_t(theta)}[div u + u . sg(s_q)]``, where every expectation
   is now over the reparametrised sample path ``x_t = G_theta(z) + sigma eps`` with fixed integrands.
2. Conditionally on x0 (again for every theta): ``E[div u] = -E[u . grad log q_t(x_t | x0)]``.
3. Hence ``grad Div = d_theta E[ d'(y(x_t)) . (s_q(x_t) - grad log q_t(x_t | x0)) ]``: gradient flows
   through ``x0 = G_theta(z)`` and through ``x_t`` everywhere (inside ``d'(y)``, ``s_p`` and ``s_q``);
   only network weights are frozen. The fake network ``s_psi`` stands in for ``s_q``.

In denoiser terms ``y = (D_phi - D_psi) / sigma^2`` and ``s_psi - grad log q_t(x_t | x0) =
(D_psi - x_t)/sigma^2 + (x_t - x0)/sigma^2 = (D_psi - x0) / sigma^2``. Therefore
- squared L2, ``d'(y) = 2y``:   ``L = 2 w (D_phi - D_psi).(D_psi - x0) / sigma^4`` -- SiD at alpha = 1
  up to the per-sample weighting;
- pseudo-Huber, ``d(y) = sqrt(||y||^2 + c^2) - c``, ``d'(y) = y / sqrt(||y||^2 + c^2)``:
  ``L = w (D_phi - D_psi).(D_psi - x0) / (sigma^2 sqrt(||D_phi - D_psi||^2 + c^2 sigma^4))``.
``c`` lives in score space (0.001 per the authors); ``w(sigma)`` is the caller's choice. Detaching
``d'(y)`` or ``x0`` in the residual gives a different, wrong gradient (see tests/unit/test_known_answer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .conditions import Condition, condition_rows, first_tensor, replace_rows
from .parametrization import Denoiser


def _sum_per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).sum(dim=1)


def _mean_per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).mean(dim=1)


def _flat_sigma(sigma: Tensor | float, batch: int, like: Tensor) -> Tensor:
    return torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1).expand(batch)


# --- fake-score losses -----------------------------------------------------------------------


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_fake_score_loss(denoised: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM denoising loss lambda(sigma) ||D_psi(x0 + sigma eps) - x0||^2 (EDM Eq. 2 with Table 1 weighting)."""
    weight = edm_loss_weight(_flat_sigma(sigma, x0.shape[0], x0), sigma_data)
    return weight * _sum_per_sample((denoised - x0) ** 2)


def eps_fake_score_loss(denoised: Tensor, x_t: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Epsilon-prediction MSE ||eps_psi(x_t) - eps||^2 (Ho et al. 2020, Eq. 14), eps_psi = (x_t - D_psi) / sigma."""
    sigma = _flat_sigma(sigma, x_t.shape[0], x_t).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return _sum_per_sample(((x_t - denoised) / sigma - noise) ** 2)


# --- SiD-LSG: classifier-free guidance in the three places of the loss ----------------------


def guided(uncond: Tensor, cond: Tensor, k: float) -> Tensor:
    """Classifier-free guidance u + k (c - u) (Ho & Salimans 2022, Eq. 6 with w = k - 1); same for eps and x0."""
    return uncond + k * (cond - uncond)


@dataclass
class LSGScales:
    """Where SiD-LSG applies guidance (Zhou et al. 2024, arXiv 2406.01561; DESIGN §3 "SiD-LSG").

    train_fake (k1): the fake network's prediction in its own training loss (with prompt dropout);
    eval_fake (k2 = k3): the fake network's prediction inside the generator loss;
    eval_real (k4): the teacher's prediction inside the generator loss. All 1.0 = no guidance.
    """

    train_fake: float = 1.0
    eval_fake: float = 1.0
    eval_real: float = 1.0
    prompt_dropout: float = 0.1

    @property
    def drops_prompts(self) -> bool:
        """The official loop drops prompts in the fake-score step when k1 != 1 or k2 != 1: both guide with the fake
        network's unconditional branch, which only dropped prompts train."""
        return self.train_fake != 1.0 or self.eval_fake != 1.0


def guided_denoise(D: Denoiser, x: Tensor, sigma: Tensor, cond: Any, uncond: Any, k: float) -> Tensor:
    """D with guidance scale k; one conditional pass when k == 1 (or no unconditional input)."""
    if k == 1.0 or uncond is None:
        return D(x, sigma, cond)
    return guided(D(x, sigma, uncond), D(x, sigma, cond), k)


def drop_prompts(cond: Condition, uncond: Condition, p: float, generator: torch.Generator | None = None) -> Condition:
    """Replace a fraction p of the batch's conditions by the unconditional one (SiD-LSG k1 training)."""
    draw_device = generator.device if generator is not None else first_tensor(cond).device
    drop = torch.rand(condition_rows(cond), generator=generator, device=draw_device) < p
    return replace_rows(drop, uncond, cond)


# --- SiD generator loss ----------------------------------------------------------------------


def sid_normaliser(x_g: Tensor, y_real: Tensor, min_value: float = 1e-5) -> Tensor:
    """SiD per-sample normaliser w = sg(mean_CHW |x_g - y_real|), clipped below (SiD, §4, Algorithm 1)."""
    with torch.no_grad():
        return _mean_per_sample((x_g - y_real).abs().float()).clamp(min=min_value).to(x_g.dtype)


def sid_generator_term(y_real: Tensor, y_fake: Tensor, x_g: Tensor, alpha: float = 1.2) -> Tensor:
    """SiD fused loss (y_r - y_f).((y_r - x_g) - alpha (y_r - y_f)) = L2 - alpha L1 (SiD, §4, Algorithm 1)."""
    diff = y_real - y_fake
    return _sum_per_sample(diff * ((y_real - x_g) - alpha * diff))


def sid_generator_loss(y_real: Tensor, y_fake: Tensor, x_g: Tensor, alpha: float = 1.2) -> Tensor:
    """SiD generator loss: the fused term over the normaliser w (SiD, §4, Algorithm 1)."""
    return sid_generator_term(y_real, y_fake, x_g, alpha) / sid_normaliser(x_g, y_real)


# --- SIM generator surrogate -----------------------------------------------------------------


def pseudo_huber_distance(y: Tensor, c: float) -> Tensor:
    """Pseudo-Huber distance d(y) = sqrt(||y||^2 + c^2) - c, per sample (SIM, §3.3)."""
    return (_sum_per_sample(y**2) + c**2).sqrt() - c


def sim_squared_l2_loss(
    y_real: Tensor, y_fake: Tensor, x_g: Tensor, sigma: Tensor, weight: Tensor | float = 1.0
) -> Tensor:
    """SIM surrogate with d = ||.||^2 in denoiser form: 2 w (D_phi - D_psi).(D_psi - x0) / sigma^4 (SIM, §3.2)."""
    sigma = _flat_sigma(sigma, x_g.shape[0], x_g)
    return weight * 2 * _sum_per_sample((y_real - y_fake) * (y_fake - x_g)) / sigma**4


def sim_pseudo_huber_loss(
    y_real: Tensor, y_fake: Tensor, x_g: Tensor, sigma: Tensor, c: float = 1e-3, weight: Tensor | float = 1.0
) -> Tensor:
    """SIM surrogate with pseudo-Huber d in denoiser form (SIM, §3.2-3.3; derivation above):
    w (D_phi - D_psi).(D_psi - x0) / (sigma^2 sqrt(||D_phi - D_psi||^2 + c^2 sigma^4))."""
    sigma = _flat_sigma(sigma, x_g.shape[0], x_g)
    diff = y_real - y_fake
    scale = (_sum_per_sample(diff**2) + c**2 * sigma**4).sqrt()
    return weight * _sum_per_sample(diff * (y_fake - x_g)) / (sigma**2 * scale)
