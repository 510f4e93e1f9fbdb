"""The pack's EDM networks as ComfyUI MODELs: same denoiser through ComfyUI, stock samplers, loader."""

import comfy.sample
import pytest
import torch
from onestep.distill.network_file import save_network
from onestep.nodes.pack_models import (
    OneStepClassLabel,
    OneStepLoadPackModel,
    OneStepPixelsToImage,
    edm_model_patcher,
)
from onestep.nodes.sampling import OneStepGenerate


def test_one_step_through_comfyui_equals_the_denoiser_at_sigma_2_5(tiny_edm_network):
    model = edm_model_patcher(tiny_edm_network)
    label = OneStepClassLabel.execute(3).result[0]
    samples = OneStepGenerate.execute(model, label, 11, 2, 28, 28, "edm", 1, 0.0).result[0]["samples"]
    z = torch.randn([2, 1, 28, 28], generator=torch.manual_seed(11))
    with torch.no_grad():
        expected = tiny_edm_network(2.5 * z, 2.5, torch.tensor([3, 3]))
    torch.testing.assert_close(samples, expected, rtol=1e-4, atol=1e-4)


def test_class_labels_reach_the_network_and_stock_samplers_run(tiny_edm_network):
    model = edm_model_patcher(tiny_edm_network)
    latent = torch.zeros(1, 1, 28, 28)
    noise = comfy.sample.prepare_noise(latent, 0)
    outputs = [
        comfy.sample.sample(model, noise, 4, 2.0, "euler", "karras", OneStepClassLabel.execute(label).result[0],
                            OneStepClassLabel.execute(-1).result[0], latent, disable_pbar=True, seed=0)
        for label in (0, 7)
    ]
    assert outputs[0].shape == (1, 1, 28, 28) and torch.isfinite(outputs[0]).all()
    assert not torch.allclose(outputs[0], outputs[1])
    image = OneStepPixelsToImage.execute({"samples": outputs[0]}).result[0]
    assert image.shape == (1, 28, 28, 3) and 0 <= float(image.min()) and float(image.max()) <= 1


def test_loader_reads_pack_network_files_and_refuses_others(tiny_edm_network, tmp_path, model_folder):
    save_network(tmp_path / "tiny_teacher.safetensors", tiny_edm_network, {"steps": 1})
    (tmp_path / "not_a_network.safetensors").write_bytes(b"\x00" * 16)
    model_folder("onestep", tmp_path)
    model = OneStepLoadPackModel.execute("tiny_teacher.safetensors").result[0]
    assert model.get_model_object("latent_format").latent_channels == 1
    with pytest.raises(Exception, match="not an EDM network saved by this pack"):
        OneStepLoadPackModel.execute("not_a_network.safetensors")


def test_load_pack_model_offers_only_edm_networks_and_names_a_missing_one_when_queued():
    options = OneStepLoadPackModel.GET_SCHEMA().inputs[0].options
    assert "teacher.safetensors" in options
    for not_a_model in ("MODEL_CARD.md", "teacher_samples_35nfe.png", "classifier.safetensors",
                        "reference_stats.safetensors"):
        assert not_a_model not in options
    assert OneStepLoadPackModel.validate_inputs("teacher.safetensors") is True
    message = OneStepLoadPackModel.validate_inputs("fmnist_sid_student.safetensors")
    assert message.startswith("OneStep Load Pack Model: 'fmnist_sid_student.safetensors' is not among the files")
    assert "onestep" in message and "teacher.safetensors" in message and "onestep_distill_fmnist" in message
    assert "not an EDM network" not in message
    assert "MODEL_CARD.md" in OneStepLoadPackModel.validate_inputs("MODEL_CARD.md")
