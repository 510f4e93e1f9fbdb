"""The trainer node's defaults are the core's, which are the official recipes; each teacher on its own DDPM table."""

import comfy.supported_models
import pytest
import torch
from onestep.distill.training import DistillConfig
from onestep.nodes.distill_trainer import OneStepDistillConfig, PromptSet, TrainerInputError, run_settings
from onestep.nodes.presets import STUDENT_INFO_KEY
from test_one_step_nodes import TINY_PIXART_CONFIG, pixart_sigma
from trainer_helpers import labels, train

pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE_SETTINGS = ("view", "ddpm_table", "init_sigma", "alpha", "lr_generator", "lr_fake_score", "ema_halflife_kimg")


def node_defaults(**overrides) -> dict:
    """The config node's output with every widget at its default."""
    defaults = {spec.id: spec.default for spec in OneStepDistillConfig.define_schema().inputs}
    return OneStepDistillConfig.execute(**{**defaults, **overrides}).result[0]


def recipe_settings(config: DistillConfig) -> dict:
    return {name: getattr(config, name) for name in RECIPE_SETTINGS}


def text_prompts(tokens: int, dim: int) -> PromptSet:
    return PromptSet(torch.randn(3, tokens, dim), torch.zeros(1, tokens, dim), "text")


@pytest.mark.parametrize("method", ["sid", "sid-lsg", "sim"])
def test_node_defaults_on_an_edm_teacher_are_the_core_s_edm_recipe(pack_teacher, method):
    settings, preset, _ = run_settings(pack_teacher, labels(), node_defaults(method=method, width=16, height=16))
    assert recipe_settings(settings) == recipe_settings(DistillConfig(method=method, view="edm"))
    assert (settings.alpha, settings.lr_generator, settings.ema_halflife_kimg, preset) == (1.2, 1e-5, 500, "edm")
    if method == "sid":  # the node's default method: node defaults = DistillConfig()'s
        assert recipe_settings(settings) == recipe_settings(DistillConfig())


def test_node_defaults_on_an_sd_teacher_are_sid_lsg_s_official_run(tiny_sd15):
    settings, preset, _ = run_settings(tiny_sd15, text_prompts(7, 32), node_defaults(method="sid-lsg"))
    assert recipe_settings(settings) == recipe_settings(DistillConfig(method="sid-lsg"))
    teacher_sigma_625 = float(tiny_sd15.get_model_object("model_sampling").sigma(torch.tensor(625.0)))
    assert settings.init_sigma == pytest.approx(teacher_sigma_625, rel=1e-6) and preset == "sid-lsg"


def tiny_pixart(comfy_host):
    return comfy_host.tiny_model_patcher(comfy.supported_models.PixArtAlpha, TINY_PIXART_CONFIG)


def test_a_pixart_teacher_is_distilled_on_its_own_table_from_sigma_2_5(comfy_host):
    """Not SD's table: t = 625 there would start the generator at sigma 7.23 instead of SIM-DiT's 2.5."""
    teacher = tiny_pixart(comfy_host)
    settings, preset, _ = run_settings(teacher, text_prompts(8, 16), node_defaults(method="sim", width=512,
                                                                                    height=512))
    assert (settings.view, settings.ddpm_table, settings.init_sigma, preset) == ("ddpm", "pixart", 2.5, "sim-pixart")
    assert float(settings.noise_levels().schedule.sigma(625)) == pytest.approx(pixart_sigma(625), rel=1e-5)
    seen = []
    hook = teacher.model.diffusion_model.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:  # 512 px: PixArt derives its position-embedding scale from the size
        student, _, _ = train(teacher, text_prompts(8, 16), run_name="pixart", method="sim", iterations=1,
                              batch_size=1, width=512, height=512)
    finally:
        hook.remove()
    timesteps = torch.cat(seen)
    assert timesteps.min() >= 20 and timesteps.max() <= 980  # the teacher's own timesteps, U{20..980}
    assert student.model_options[STUDENT_INFO_KEY].preset == "sim-pixart"


class OtherTable(comfy.supported_models.SD15):
    sampling_settings = {"linear_start": 0.0001, "linear_end": 0.02}


def test_a_ddpm_teacher_on_a_table_no_recipe_knows_is_refused(comfy_host):
    teacher = comfy_host.tiny_model_patcher(OtherTable)
    with pytest.raises(TrainerInputError, match=r"DDPM table .* is not the sd table .* supported: SD1.x/2.x/SDXL and "
                                                r"PixArt-alpha"):
        run_settings(teacher, text_prompts(7, 32), node_defaults(method="sid-lsg"))


def test_a_negative_ema_half_life_sent_to_the_node_is_refused_with_the_reason(pack_teacher):
    with pytest.raises(TrainerInputError, match=r"ema_halflife_kimg must be above 0"):
        run_settings(pack_teacher, labels(), node_defaults(ema_halflife_kimg=-1.0, width=16, height=16))
