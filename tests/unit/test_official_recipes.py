"""The shipped workflows use the official recipes' settings where the official code has one (DESIGN 3c)."""

import json
from pathlib import Path

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
