"""The Distiller: network roles, callbacks, exact resume, refusals, non-finite handling, LSG and DDPM views."""

import json
import math

import pytest
import torch
from onestep.distill.checkpoint import CheckpointMismatch, latest_checkpoint
from onestep.distill.losses import LSGScales
from onestep.distill.training import DistillConfig, Distiller, DivergenceError
from torch import nn
from training_helpers import SHAPE, TinyDenoiser, config


def make_distiller(cfg=None, hidden=16, **kw):
    torch.manual_seed(0)
    return Distiller(TinyDenoiser(hidden), cfg or config(), **kw)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_config_round_trips_through_json():
    cfg = config(method="sid-lsg", k_eval_real=4.5, ema_beta=0.99, ema_halflife_kimg=None)
    again = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.adam_betas == (0.0, 0.999)
    with pytest.raises(ValueError, match="unknown DistillConfig keys: \\['lr'\\]"):
        DistillConfig.from_dict(cfg.to_dict() | {"lr": 1})
    with pytest.raises(ValueError, match="method"):
        DistillConfig(method="dmd")


def test_networks_start_as_teacher_copies_and_only_students_learn():
    distiller = make_distiller()
    teacher = distiller.teacher
    teacher_before = snapshot(teacher)
    assert distiller.generator is not teacher and distiller.fake_score is not teacher
    for name, value in distiller.generator.state_dict().items():
        assert torch.equal(value, teacher_before[name]) and torch.equal(distiller.fake_score.state_dict()[name], value)
    generator_before, fake_before = snapshot(distiller.generator), snapshot(distiller.fake_score)

    distiller.train_step()

    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, generator_before[k]) for k, v in distiller.generator.state_dict().items())
    assert any(not torch.equal(v, fake_before[k]) for k, v in distiller.fake_score.state_dict().items())
    for optimizer in (distiller.opt_generator, distiller.opt_fake_score):
        assert optimizer.param_groups[0]["betas"] == (0.0, 0.999) and optimizer.param_groups[0]["eps"] == 1e-8


def test_a_function_teacher_needs_explicit_students():
    with pytest.raises(TypeError, match="pass generator and fake_score"):
        Distiller(lambda x, sigma, cond: x, config())


@pytest.mark.parametrize("method", ["sid", "sim", "sid-lsg"])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, method):
    extra = dict(k_train_fake=1.5, k_eval_fake=1.5, k_eval_real=2.0) if method == "sid-lsg" else {}
    cond_kw = dict(cond_sampler=lambda n, g: torch.randn(n, 2, generator=g), uncond=torch.zeros(1, 2))
    uninterrupted = make_distiller(config(method=method, **extra), **cond_kw)
    straight = uninterrupted.train()

    first_half = make_distiller(config(method=method, steps=3, **extra), **cond_kw)
    first_half.train(run_dir=tmp_path)
    resumed = make_distiller(config(method=method, steps=6, **extra), **cond_kw)
    resumed.generator.apply(lambda m: isinstance(m, nn.Linear) and nn.init.zeros_(m.weight))  # must be overwritten
    assert resumed.resume(tmp_path) == tmp_path / "step_000003"
    assert resumed.step == 3 and resumed.cur_nimg == 24
    second_half = resumed.train(run_dir=tmp_path)

    assert [h["generator"] for h in second_half] == [h["generator"] for h in straight[3:]]
    assert [h["fake_score"] for h in second_half] == [h["fake_score"] for h in straight[3:]]
    for a, b in ((uninterrupted.generator, resumed.generator), (uninterrupted.ema.module, resumed.ema.module)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_callbacks_and_should_stop(tmp_path):
    progress, previews, checkpoints = [], [], []
    distiller = make_distiller(config(steps=10, preview_every=2, preview_count=3, checkpoint_every=4))
    history = distiller.train(
        run_dir=tmp_path,
        on_progress=lambda step, total, losses: progress.append((step, total, sorted(losses))),
        on_preview=lambda step, images: previews.append((step, images.shape)),
        on_checkpoint=checkpoints.append,
        should_stop=lambda: len(progress) >= 7,
    )
    assert len(history) == 7 and distiller.step == 7
    assert progress[0] == (1, 10, ["dropped", "fake_score", "generator", "out_of_range"]) and progress[-1][0] == 7
    assert previews == [(2, (3, *SHAPE)), (4, (3, *SHAPE)), (6, (3, *SHAPE))]
    assert checkpoints == [4, 7]  # every 4 steps, and where it stopped
    assert latest_checkpoint(tmp_path).name == "step_000007"


def test_preview_is_the_ema_generator_on_fixed_noise():
    distiller = make_distiller(config(ema_halflife_kimg=None, ema_beta=0.0))
    first = distiller.preview()
    assert torch.equal(first, distiller.preview())
    distiller.train_step()
    with torch.no_grad():
        expected = distiller.generator(2.5 * distiller.preview_z, torch.full((4, 1, 1, 1), 2.5))
    torch.testing.assert_close(distiller.preview(), expected)  # beta 0: the EMA is the live generator


def test_resume_refuses_another_config_but_accepts_more_steps(tmp_path):
    make_distiller(config(steps=2)).train(run_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="'alpha' is 1.2 in the checkpoint, 1.0 here"):
        make_distiller(config(steps=2, alpha=1.0)).resume(tmp_path)
    longer = make_distiller(config(steps=5))
    longer.resume(tmp_path)
    assert len(longer.train()) == 3


def test_a_run_saved_before_the_memory_settings_existed_resumes(tmp_path):
    make_distiller(config(steps=2)).train(run_dir=tmp_path)
    state_file = latest_checkpoint(tmp_path) / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("grad_accumulation", "gradient_checkpointing", "fused_adamw", "lora_rank"):
        del state["config"][key]
    state_file.write_text(json.dumps(state))

    longer = make_distiller(config(steps=3))
    longer.resume(tmp_path)
    assert len(longer.train()) == 1
    with pytest.raises(CheckpointMismatch, match="'lora_rank' is 0 in the checkpoint, 4 here"):
        make_distiller(config(steps=3, lora_rank=4)).resume(tmp_path)


def test_resume_refuses_another_network(tmp_path):
    make_distiller(config(steps=1)).train(run_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="different network: 'fake_score.net.0.bias'"):
        make_distiller(config(steps=1), hidden=32).resume(tmp_path)


class FlakyTeacher(TinyDenoiser):
    """Returns NaN for the samples listed in ``bad`` (by batch position), or for all of them."""

    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def forward(self, x, sigma, cond=None):
        out = super().forward(x, sigma, cond)
        if self.bad == "all":
            return out * math.nan
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[self.bad] = True
        return torch.where(mask.reshape(-1, 1, 1, 1), math.nan, out)


def test_non_finite_samples_are_dropped_and_counted():
    torch.manual_seed(0)
    teacher = FlakyTeacher(bad=[0, 3])
    distiller = Distiller(teacher, config(steps=4), generator=TinyDenoiser(), fake_score=TinyDenoiser())
    history = distiller.train()
    assert [h["dropped"] for h in history] == [2] * 4 and distiller.dropped_samples == 8
    assert all(math.isfinite(h["generator"]) for h in history)
    assert all(p.isfinite().all() for p in distiller.generator.parameters())


def test_a_run_that_stays_non_finite_stops_with_a_clear_error():
    torch.manual_seed(0)
    teacher = FlakyTeacher(bad="all")
    distiller = Distiller(
        teacher, config(steps=50, max_nonfinite_steps=3), generator=TinyDenoiser(), fake_score=TinyDenoiser()
    )
    with pytest.raises(DivergenceError, match=r"3 steps in a row \(up to step 3\).*\(24 non-finite samples"):
        distiller.train()
    assert all(p.isfinite().all() for p in distiller.generator.parameters())


EIGHT_MODES = torch.stack([2 * torch.tensor([math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)]) for k in range(8)])
MODE_VARIANCE = 0.05**2


def eight_gaussians_denoiser(x, sigma, cond=None):
    """The exact denoiser of an even mixture of 8 Gaussians (std 0.05) on a circle of radius 2."""
    variance = MODE_VARIANCE + sigma.reshape(-1, 1) ** 2
    weights = (-((x[:, None, :] - EIGHT_MODES) ** 2).sum(-1) / (2 * variance)).softmax(dim=1)
    per_mode = EIGHT_MODES + (MODE_VARIANCE / variance)[:, :, None] * (x[:, None, :] - EIGHT_MODES)
    return (weights[..., None] * per_mode).sum(dim=1)


def test_a_run_whose_finite_samples_leave_the_data_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """SiD at alpha 1.2 and a too-large lr drifts away from the 8 modes with every value finite (mean squared
    distance to the nearest mode 3e2 after 5 steps, 4e5 after 55, measured): a bad step, like a non-finite one."""
    from test_convergence import MLPDenoiser

    torch.manual_seed(0)
    cfg = DistillConfig(method="sid", steps=200, batch_size=128, sample_shape=(2,), lr_generator=3e-2,
                        lr_fake_score=9e-2, alpha=1.2, sigma_data=1.0, ema_halflife_kimg=None, ema_beta=0.99,
                        checkpoint_every=2)
    assert cfg.max_sample_rms == 20  # 20 sigma_data; the modes have RMS 2
    distiller = Distiller(eight_gaussians_denoiser, cfg, generator=MLPDenoiser(), fake_score=MLPDenoiser())
    with pytest.raises(DivergenceError, match=r"5 steps in a row \(up to step (\d+)\) most generator samples left "
                                              r"the data's range \(RMS above max_sample_rms = 20; \d+ of 128"):
        distiller.train(run_dir=tmp_path)
    assert distiller.step < 30
    kept = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert kept["step"] <= distiller.step - 5 and kept["extra"]["nonfinite_streak"] == 0


def recording(calls: dict) -> type:
    """A TinyDenoiser class whose instances append the conditions they are called with to ``calls[role]``."""

    class Recording(TinyDenoiser):
        def __init__(self, role):
            super().__init__()
            self.role = role

        def forward(self, x, sigma, cond=None):
            calls[self.role].append(cond.clone())
            return super().forward(x, sigma, cond)

    return Recording


def test_lsg_guidance_placement():
    """k4 guides the teacher, k2 = k3 the fake in the generator loss, k1 the fake's own training."""
    calls = {"teacher": [], "fake": []}
    Recording = recording(calls)

    uncond = torch.zeros(1, 2)
    torch.manual_seed(0)
    distiller = Distiller(
        Recording("teacher"),
        config(method="sid-lsg", batch_size=400, k_train_fake=1.5, k_eval_fake=1.0, k_eval_real=3.0),
        generator=TinyDenoiser(),
        fake_score=Recording("fake"),
        cond_sampler=lambda n, g: torch.rand(n, 2, generator=g) + 1,
        uncond=uncond,
    )
    distiller.train_step()
    # teacher (k4 = 3): an unconditional and a conditional pass
    assert len(calls["teacher"]) == 2 and torch.equal(calls["teacher"][0], uncond)
    # fake: training with k1 = 1.5 (uncond pass + conds with ~10% dropped), then one conditional pass (k2 = 1)
    assert len(calls["fake"]) == 3 and torch.equal(calls["fake"][0], uncond)
    dropped = (calls["fake"][1] == 0).all(dim=1).float().mean().item()
    assert 0.05 < dropped < 0.15
    assert (calls["fake"][2] >= 1).all()


@pytest.mark.parametrize("k1, k2", [(1.0, 2.0), (1.5, 1.0)])
def test_lsg_drops_prompts_when_k1_or_k2_guides_and_generates_the_image_from_the_dropped_prompt(k1, k2):
    """Official SiD-LSG: prompts dropped to "" in the fake-score step when k1 != 1 or k2 != 1, for the generated
    image and the fake network's training alike (k2 uses the fake's unconditional branch: only drops train it)."""
    calls = {"generator": [], "fake": []}
    Recording = recording(calls)

    torch.manual_seed(0)
    distiller = Distiller(TinyDenoiser(), config(method="sid-lsg", batch_size=400, k_train_fake=k1, k_eval_fake=k2),
                          generator=Recording("generator"), fake_score=Recording("fake"),
                          cond_sampler=lambda n, g: torch.rand(n, 2, generator=g) + 1, uncond=torch.zeros(1, 2))
    distiller.fake_score_step()
    generated_from, trained_on = calls["generator"][0], calls["fake"][-1]
    assert torch.equal(generated_from, trained_on)
    dropped = (generated_from == 0).all(dim=1).float().mean().item()
    assert 0.05 < dropped < 0.15


def test_plain_sid_lsg_scales_drop_no_prompt():
    assert not LSGScales(1.0, 1.0, 4.5).drops_prompts
    assert LSGScales(1.0, 1.5, 1.0).drops_prompts and LSGScales(2.0, 1.0, 1.0).drops_prompts


def test_ddpm_view_draws_table_sigmas_and_uses_the_eps_loss():
    distiller = make_distiller(config(view="ddpm", method="sid", alpha=1.0))
    assert distiller.config.resolved_fake_score_loss() == "eps"
    seen = []
    original = distiller.fake_score.forward
    distiller.fake_score.forward = lambda x, sigma, cond=None: seen.append(sigma.flatten()) or original(x, sigma, cond)
    distiller.train_step()
    table = distiller.noise.schedule.sigmas.float()
    assert all(torch.isin(s, table[20:981]).all() for s in seen)


def test_lsg_guidance_without_conditions_is_refused():
    with pytest.raises(ValueError, match="needs a cond_sampler and an unconditional input"):
        make_distiller(config(method="sid-lsg", k_eval_real=2.0))
    make_distiller(config(method="sid-lsg"))  # all scales 1: plain SiD, no conditions needed


def test_resume_refuses_another_teacher_id(tmp_path):
    make_distiller(config(steps=1, teacher_id="sd15.safetensors:ab12")).train(run_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="'teacher_id'"):
        make_distiller(config(steps=1, teacher_id="sd21.safetensors:cd34")).resume(tmp_path)


class BlowsUpOnFirstRow(TinyDenoiser):
    """Scales its first output row by +inf: the row is dropped, but backprop through it yields NaN gradients."""

    def forward(self, x, sigma, cond=None):
        out = super().forward(x, sigma, cond)
        scale = torch.ones(x.shape[0], 1, 1, 1)
        scale[0] = math.inf
        return out * scale


def test_nan_gradients_are_zeroed_so_weights_stay_finite(monkeypatch):
    def run():
        torch.manual_seed(0)
        distiller = Distiller(TinyDenoiser(), config(steps=2), generator=BlowsUpOnFirstRow(), fake_score=TinyDenoiser())
        history = distiller.train()
        return distiller, history

    def students_finite(distiller):
        params = [*distiller.generator.parameters(), *distiller.fake_score.parameters()]
        return all(p.isfinite().all() for p in params)

    distiller, history = run()
    assert [h["dropped"] for h in history] == [2, 2]  # row 0 of both the fake-score and the generator batch
    assert students_finite(distiller)

    monkeypatch.setattr("onestep.distill.training._sanitize_grads", lambda module: None)
    unguarded, _ = run()
    assert not students_finite(unguarded)  # the guard is what keeps them finite
