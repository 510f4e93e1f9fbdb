"""Each loss against an independent statement of its equation, and the identities between them."""

import pytest
import torch
from onestep.distill.losses import (
    LSGScales,
    drop_prompts,
    edm_fake_score_loss,
    edm_loss_weight,
    eps_fake_score_loss,
    guided,
    guided_denoise,
    pseudo_huber_distance,
    sid_generator_loss,
    sid_generator_term,
    sid_normaliser,
    sim_pseudo_huber_loss,
    sim_squared_l2_loss,
)

SHAPE = (5, 3, 4, 4)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x_g = torch.randn(SHAPE, generator=g, dtype=torch.float64, requires_grad=True)
    y_real = torch.randn(SHAPE, generator=g, dtype=torch.float64, requires_grad=True)
    y_fake = torch.randn(SHAPE, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = torch.rand(SHAPE[0], generator=g, dtype=torch.float64) * 3 + 0.1
    return x_g, y_real, y_fake, sigma


def dot(a, b):
    return (a * b).flatten(1).sum(1)


def test_edm_weight_is_inverse_of_the_effective_target_variance():
    sigma = torch.tensor([0.1, 0.5, 2.0, 80.0])
    # lambda = 1 / c_out^2 with c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    torch.testing.assert_close(edm_loss_weight(sigma), 1 / c_out**2)


def test_edm_fake_score_loss_per_sample(batch):
    x_g, y_real, _, sigma = batch
    loss = edm_fake_score_loss(y_real, x_g, sigma)
    assert loss.shape == (SHAPE[0],)
    torch.testing.assert_close(loss, edm_loss_weight(sigma) * ((y_real - x_g) ** 2).flatten(1).sum(1))
    assert edm_fake_score_loss(x_g, x_g, sigma).abs().max() == 0


def test_eps_loss_is_x0_error_over_sigma_squared(batch):
    x0, denoised, noise, sigma = batch
    x_t = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    torch.testing.assert_close(
        eps_fake_score_loss(denoised, x_t, noise, sigma), ((denoised - x0) ** 2).flatten(1).sum(1) / sigma**2
    )


def test_guidance_endpoints_and_linearity():
    g = torch.Generator().manual_seed(1)
    x, e_u, e_c = (torch.randn(4, 2, generator=g) for _ in range(3))
    torch.testing.assert_close(guided(e_u, e_c, 1.0), e_c)
    torch.testing.assert_close(guided(e_u, e_c, 0.0), e_u)
    # guidance commutes with the affine eps -> x0 map, so it can be applied to denoiser outputs
    sigma = 1.7
    torch.testing.assert_close(guided(x - sigma * e_u, x - sigma * e_c, 4.5), x - sigma * guided(e_u, e_c, 4.5))


def test_guided_denoise_runs_one_pass_without_guidance_and_two_with():
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(cond)
        return x * 0 + cond

    x, cond, uncond = torch.zeros(3, 1), torch.full((3, 1), 2.0), torch.zeros(1, 1)
    torch.testing.assert_close(guided_denoise(denoiser, x, 1.0, cond, uncond, 1.0), cond)
    assert len(calls) == 1
    torch.testing.assert_close(guided_denoise(denoiser, x, 1.0, cond, uncond, 1.5), torch.full((3, 1), 3.0))
    assert len(calls) == 3 and calls[1] is uncond


def test_drop_prompts_replaces_about_p_of_the_batch():
    cond = torch.arange(1, 20001, dtype=torch.float32).reshape(-1, 1, 1)
    uncond = torch.zeros(1, 1, 1)
    dropped = drop_prompts(cond, uncond, 0.1, torch.Generator().manual_seed(0))
    is_dropped = (dropped == 0).flatten()
    assert abs(is_dropped.float().mean().item() - 0.1) < 0.01  # 4.7 binomial standard deviations
    assert torch.equal(dropped[~is_dropped], cond[~is_dropped])


def test_lsg_defaults_are_unguided():
    scales = LSGScales()
    assert (scales.train_fake, scales.eval_fake, scales.eval_real) == (1.0, 1.0, 1.0)
    assert scales.prompt_dropout == 0.1


def test_sid_term_equals_its_expanded_form(batch):
    x_g, y_real, y_fake, _ = batch
    diff = y_real - y_fake
    for alpha in (1.0, 1.2):
        expanded = (1 - alpha) * dot(diff, diff) + dot(diff, y_fake - x_g)
        torch.testing.assert_close(sid_generator_term(y_real, y_fake, x_g, alpha), expanded)


def test_sid_normaliser_is_clipped_per_sample_mean_abs_without_gradient(batch):
    x_g, y_real, _, _ = batch
    w = sid_normaliser(x_g, y_real)
    torch.testing.assert_close(w, (x_g - y_real).abs().flatten(1).mean(1))
    assert not w.requires_grad
    assert sid_normaliser(x_g, x_g).min() == pytest.approx(1e-5)


def test_sid_loss_gradient_treats_the_normaliser_as_constant(batch):
    x_g, y_real, y_fake, _ = batch
    w = (x_g - y_real).abs().flatten(1).mean(1).detach()
    expected = torch.autograd.grad((sid_generator_term(y_real, y_fake, x_g, 1.2) / w).sum(), (x_g, y_real, y_fake))
    actual = torch.autograd.grad(sid_generator_loss(y_real, y_fake, x_g, 1.2).sum(), (x_g, y_real, y_fake))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_sim_squared_l2_is_sid_alpha_one_times_two_over_sigma4(batch):
    x_g, y_real, y_fake, sigma = batch
    sim = sim_squared_l2_loss(y_real, y_fake, x_g, sigma)
    sid = 2 / sigma**4 * sid_generator_term(y_real, y_fake, x_g, alpha=1.0)
    torch.testing.assert_close(sim, sid)
    for a, b in zip(
        torch.autograd.grad(sim.sum(), (x_g, y_real, y_fake)), torch.autograd.grad(sid.sum(), (x_g, y_real, y_fake))
    ):
        torch.testing.assert_close(a, b)


def test_pseudo_huber_distance_and_its_gradient():
    y = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    c = 0.5
    d = pseudo_huber_distance(y, c)
    torch.testing.assert_close(d, torch.tensor([(25 + c**2) ** 0.5 - c, 0.0], dtype=torch.float64))
    (grad,) = torch.autograd.grad(d.sum(), y)
    torch.testing.assert_close(grad, y / ((y**2).sum(1, keepdim=True) + c**2).sqrt())


def test_sim_pseudo_huber_in_score_space(batch):
    """The denoiser form equals d'(y).(s_psi - grad log q(x_t|x0)) written with scores."""
    x_g, y_real, y_fake, sigma = batch
    c = 0.3
    s = sigma.reshape(-1, 1, 1, 1)
    y = (y_real - y_fake) / s**2
    d_prime = y / ((y**2).flatten(1).sum(1).reshape(-1, 1, 1, 1) + c**2).sqrt()
    residual = (y_fake - x_g) / s**2
    torch.testing.assert_close(sim_pseudo_huber_loss(y_real, y_fake, x_g, sigma, c=c), dot(d_prime, residual))


def test_sim_pseudo_huber_tends_to_squared_l2_over_2c_for_large_c(batch):
    x_g, y_real, y_fake, sigma = batch
    c = 1e7
    torch.testing.assert_close(
        sim_pseudo_huber_loss(y_real, y_fake, x_g, sigma, c=c),
        sim_squared_l2_loss(y_real, y_fake, x_g, sigma) / (2 * c),
        rtol=1e-6,
        atol=0,
    )


def test_sim_weight_multiplies_per_sample(batch):
    x_g, y_real, y_fake, sigma = batch
    weight = sigma**2
    torch.testing.assert_close(
        sim_pseudo_huber_loss(y_real, y_fake, x_g, sigma, weight=weight),
        weight * sim_pseudo_huber_loss(y_real, y_fake, x_g, sigma),
    )
