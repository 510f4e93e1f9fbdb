"""Shared by the trainer tests: a small config, label prompts, a training call, weight snapshots."""

from onestep.nodes.distill_trainer import OneStepDistillConfig, OneStepDistillTrainer, OneStepPromptSource

SETTINGS = dict(method="sid", iterations=6, batch_size=4, lr_generator=1e-4, lr_fake_score=1e-4, alpha=1.2,
                k1_train_fake=1.0, k2_k3_eval_fake=1.0, k4_eval_real=1.0, sim_c=1e-3, width=16, height=16,
                precision="fp32", ema_halflife_kimg=0.01, seed=3, checkpoint_every=2, preview_every=2)


def config(**overrides):
    return OneStepDistillConfig.execute(**{**SETTINGS, **overrides}).result[0]


def labels(text="0-9"):
    return OneStepPromptSource.execute("class labels", text, "", "").result[0]


def train(teacher, prompts, run_name="run", resume=True, **overrides):
    """student, run folder, curve (the fourth output, the report, is checked in test_distill_trainer.py)."""
    return OneStepDistillTrainer.execute(teacher, prompts, config(**overrides), run_name, resume).result[:3]


def weights(student):
    return {k: v.clone() for k, v in student.model.diffusion_model.state_dict().items()}
