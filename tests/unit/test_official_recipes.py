"""The shipped workflows use the official recipes' settings where the official code has one (DESIGN 3c)."""

import json
import math
from pathlib import Path

import pytest
import torch
from onestep.distill.ema import ramped_halflife_nimg
from onestep.distill.recipes import RECIPES
from onestep.distill.training import DistillConfig

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows" / "api"


def node_inputs(workflow: str, class_type: str) -> dict:
    prompt = json.loads((WORKFLOWS / f"{workflow}.json").read_text())
    (inputs,) = [node["inputs"] for node in prompt.values() if node["class_type"] == class_type]
    return inputs


def test_sd15_distillation_uses_sid_lsg_s_official_alpha_and_learning_rates():
    config = node_inputs("onestep_distill_sd15", "OneStepDistillConfig")
    assert config["method"] == "sid-lsg"
    assert config["alpha"] == 1.0  # SiD-LSG for SD: 1.0 (1.2 is SiD's EDM setting)
    assert config["lr_generator"] == config["lr_fake_score"] == 1e-6


# --- the core's defaults per method are the official recipes (distill/recipes.py) -----------------------------


def test_sid_defaults_are_sid_s_cifar10_recipe():
    config = DistillConfig(method="sid")
    assert (config.view, config.alpha, config.init_sigma) == ("edm", 1.2, 2.5)
    assert config.lr_generator == config.lr_fake_score == 1e-5
    assert config.ema_halflife_kimg == 500  # the script's --ema 0.5 is in millions of images


def test_sid_lsg_defaults_are_sid_lsg_s_sd15_recipe():
    """DistillConfig(method="sid-lsg") is the official SD1.5 run: DDPM view, t = 625, alpha 1, lr 1e-6, EMA 50 kimg."""
    config = DistillConfig(method="sid-lsg")
    assert (config.view, config.ddpm_table, config.alpha) == ("ddpm", "sd", 1.0)
    assert config.init_sigma == pytest.approx(sd_sigma(625), rel=1e-6) and config.init_sigma == pytest.approx(2.5017,
                                                                                                              abs=1e-4)
    assert config.lr_generator == config.lr_fake_score == 1e-6
    assert config.ema_halflife_kimg == 50


def test_a_method_on_an_sd_teacher_takes_the_sd_recipe_and_explicit_values_win():
    sid_on_sd = DistillConfig(method="sid", view="ddpm")
    assert (sid_on_sd.alpha, sid_on_sd.lr_generator, sid_on_sd.ema_halflife_kimg) == (1.0, 1e-6, 50)
    explicit = DistillConfig(method="sid-lsg", alpha=1.2, lr_generator=3e-6, ema_halflife_kimg=5, init_sigma=2.0)
    assert (explicit.alpha, explicit.lr_generator, explicit.ema_halflife_kimg, explicit.init_sigma) == (1.2, 3e-6, 5,
                                                                                                        2.0)
    assert DistillConfig(ema_halflife_kimg=None, ema_beta=0.99).ema_halflife_kimg is None  # a fixed beta instead


def test_the_ema_averages_over_the_official_half_life_once_the_ramp_up_ends():
    """EDM's rule: half-life min(H, 0.05 nimg); at 20 M images SiD averages over 500 k images, SiD-LSG over 50 k."""
    for method, halflife_nimg in (("sid", 500_000), ("sid-lsg", 50_000)):
        config = DistillConfig(method=method)
        assert ramped_halflife_nimg(config.ema_halflife_kimg, 20_000_000, config.ema_rampup_ratio) == halflife_nimg
    assert ramped_halflife_nimg(DistillConfig().ema_halflife_kimg, 4_000, 0.05) == 200  # ramp-up: 5 % of 4 k images


@pytest.mark.parametrize("halflife", [0.0, -1.0])
def test_an_ema_half_life_of_zero_or_below_is_refused_with_the_reason(halflife):
    with pytest.raises(ValueError, match=r"ema_halflife_kimg must be above 0.*500 \(SiD, CIFAR-10\) and 50 \(SiD-LSG"):
        DistillConfig(ema_halflife_kimg=halflife)


def sd_sigma(timestep: int) -> float:
    """sigma_t of SD's scaled-linear table, written out from the DDPM definition (independent of the pack)."""
    abar = 1.0
    for i in range(timestep + 1):
        beta = (math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
        abar *= 1 - beta
    return math.sqrt((1 - abar) / abar)


def pixart_sigma(timestep: int) -> float:
    """sigma_t of PixArt-alpha's linear table (betas 1e-4 .. 0.02 over 1000 steps), written out."""
    abar = 1.0
    for i in range(timestep + 1):
        abar *= 1 - (1e-4 + i / 999 * (0.02 - 1e-4))
    return math.sqrt((1 - abar) / abar)


def test_a_pixart_teacher_is_probed_on_its_own_table_from_sigma_2_5():
    """SIM-DiT starts at 2.5 z; SD's t = 625 on PixArt's table would be sigma 7.23."""
    config = DistillConfig(method="sim", view="ddpm", ddpm_table="pixart")
    assert config.init_sigma == 2.5
    assert pixart_sigma(625) == pytest.approx(7.23, abs=0.01)
    table = config.noise_levels().schedule
    for t in (20, 625, 980):
        assert float(table.sigma(t)) == pytest.approx(pixart_sigma(t), rel=1e-5)
    drawn = config.noise_levels().generator_sigmas(4000, torch.Generator().manual_seed(0))
    assert float(drawn.max()) == pytest.approx(pixart_sigma(980), rel=1e-5)
    assert float(drawn.min()) == pytest.approx(pixart_sigma(20), rel=1e-5)


def test_an_unknown_ddpm_table_is_refused():
    with pytest.raises(ValueError, match=r"ddpm_table must be one of \('sd', 'pixart'\)"):
        DistillConfig(view="ddpm", ddpm_table="cosine")


# --- the fake score's noise law follows sigma_data ----------------------------------------------------------


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 0.25])
def test_the_fake_score_noise_law_scales_with_sigma_data(sigma_data):
    """EDM's ln(sigma) ~ N(-1.2, 1.2^2) is for sigma_data 0.5; the noise-to-data ratio sigma / sigma_data keeps its
    law at any sigma_data: ln(sigma / sigma_data) ~ N(-1.2 - ln 0.5, 1.2^2)."""
    sigmas = DistillConfig(sigma_data=sigma_data).noise_levels().fake_score_sigmas(200_000, torch.Generator()
                                                                                  .manual_seed(0))
    log_ratio = (sigmas / sigma_data).log()
    assert float(log_ratio.mean()) == pytest.approx(-1.2 - math.log(0.5), abs=0.01)
    assert float(log_ratio.std()) == pytest.approx(1.2, abs=0.01)


def readme_recipe_rows() -> dict[str, list[str]]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text.split("### Recipes: the official settings and the pack's defaults")[1].split("\n\n")[2]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_the_readme_recipe_table_states_the_code_s_defaults():
    """Columns: SiD official, EDM pack default, SiD-LSG official, SD pack default, PixArt pack default."""
    rows = readme_recipe_rows()
    for column, recipe in ((1, RECIPES["edm"]), (3, RECIPES["sd"]), (4, RECIPES["pixart"])):
        lr = f"{recipe.lr:.0e}".replace("e-0", "e-")  # 1e-5, as the README writes it
        assert rows["lr, generator / fake score"][column].startswith(f"{lr} / {lr}")
        assert rows["alpha"][column].startswith(f"{recipe.alpha:g}")
        assert rows["EMA half-life"][column].startswith(f"{recipe.ema_halflife_kimg:g} kimg")
        start = (f"t = {recipe.init_timestep} (sigma {recipe.init_sigma():.4f})" if recipe.init_timestep
                 else f"sigma {recipe.init_sigma():g}")
        assert rows["generator input"][column].startswith(start)
    for official, pack in ((0, 1), (2, 3)):  # where an official setting exists, the pack's default is it
        for setting in ("generator input", "lr, generator / fake score", "alpha"):
            assert rows[setting][official] == rows[setting][pack]


def test_the_shipped_distillation_workflows_state_the_recipe_s_ema_half_life():
    """Shared workflows carry the official value explicitly (the config node's 0 would mean the same)."""
    sd15 = node_inputs("onestep_distill_sd15", "OneStepDistillConfig")
    assert sd15["ema_halflife_kimg"] == RECIPES["sd"].ema_halflife_kimg
    fmnist = node_inputs("onestep_distill_fmnist", "OneStepDistillConfig")
    assert (fmnist["alpha"], fmnist["ema_halflife_kimg"]) == (RECIPES["edm"].alpha, RECIPES["edm"].ema_halflife_kimg)
