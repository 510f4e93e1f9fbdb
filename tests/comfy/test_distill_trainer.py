"""The in-graph trainer on small real models: pack EDM teacher, eps and v-prediction UNets; interrupt and resume."""

import comfy.model_base
import comfy.model_management
import comfy.supported_models
import folder_paths
import pytest
import torch
from onestep.nodes.distill_trainer import (
    ComfyDenoiser,
    OneStepPromptSource,
    PromptSet,
    TrainerInputError,
    sdxl_conditions,
)
from onestep.nodes.pack_models import OneStepClassLabel, OneStepLoadPackModel
from onestep.nodes.presets import STUDENT_INFO_KEY
from onestep.nodes.sampling import OneStepGenerate
from onestep.nodes.students import OneStepSaveStudent
from trainer_helpers import labels, train, weights

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is fastest on a busy CPU


@pytest.mark.parametrize("method", ["sid", "sim"])
def test_trainer_returns_a_student_that_one_step_generate_samples(pack_teacher, method):
    student, run_folder, curve = train(pack_teacher, labels(), run_name=method, method=method)
    assert student.model_options[STUDENT_INFO_KEY].preset == "edm"
    assert student.model_options[STUDENT_INFO_KEY].steps == 6
    assert curve.shape == (1, 320, 640, 3)
    assert (folder_paths.get_output_directory() + "/onestep_runs/" + method) == run_folder
    samples = OneStepGenerate.execute(student, OneStepClassLabel.execute(2).result[0], 0, 2, 16, 16, "auto", 1,
                                      0.0).result[0]["samples"]
    assert samples.shape == (2, 1, 16, 16) and torch.isfinite(samples).all()
    assert any(not torch.equal(a, b) for a, b in zip(weights(student).values(), weights(pack_teacher).values()))


def test_interrupt_then_resume_repeats_the_uninterrupted_run(pack_teacher, monkeypatch):
    uninterrupted = weights(train(pack_teacher, labels(), run_name="straight")[0])

    polls = []

    def interrupt_after_three_steps():
        polls.append(1)
        return len(polls) > 3

    monkeypatch.setattr(comfy.model_management, "processing_interrupted", interrupt_after_three_steps)
    monkeypatch.setattr(comfy.model_management, "interrupt_processing", True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(pack_teacher, labels(), run_name="interrupted")
    monkeypatch.undo()

    student, run_folder, _ = train(pack_teacher, labels(), run_name="interrupted")
    assert student.model_options[STUDENT_INFO_KEY].steps == 6
    resumed = weights(student)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def test_a_run_folder_from_another_config_is_refused_naming_the_key(pack_teacher):
    train(pack_teacher, labels(), run_name="shared")
    with pytest.raises(TrainerInputError, match="cannot resume.*lr_generator"):
        train(pack_teacher, labels(), run_name="shared", lr_generator=5e-4)
    with pytest.raises(TrainerInputError, match="already holds checkpoints; turn 'resume' on"):
        train(pack_teacher, labels(), run_name="shared", resume=False)


def test_bad_prompts_are_refused_with_the_fix(pack_teacher, tiny_sd15):
    with pytest.raises(TrainerInputError, match="the prompt list is empty"):
        OneStepPromptSource.execute("text", "", "  \n ", "")
    with pytest.raises(TrainerInputError, match="class-label prompts fit the pack's class-conditional models"):
        train(tiny_sd15, labels())
    with pytest.raises(TrainerInputError, match="label 12 is out of range"):
        train(pack_teacher, labels("0,12"))
    text = PromptSet(torch.randn(3, 7, 64), torch.randn(1, 7, 64), "text")
    with pytest.raises(TrainerInputError, match="64-d embeddings but the teacher expects 32-d"):
        train(tiny_sd15, text)
    with pytest.raises(ValueError, match="run_name '../x' contains '..'"):
        train(pack_teacher, labels(), run_name="../x")


class TinyV(comfy.supported_models.SD15):
    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_unets_distill_with_text_prompts_into_sid_lsg_students(tiny_sd15, comfy_host, prediction):
    teacher = tiny_sd15 if prediction == "eps" else comfy_host.tiny_model_patcher(TinyV)
    prompts = PromptSet(torch.randn(3, 7, 32), torch.zeros(1, 7, 32), "text")
    student, _, _ = train(teacher, prompts, run_name=prediction, method="sid-lsg", alpha=1.0, k4_eval_real=1.5,
                          k2_k3_eval_fake=1.5, k1_train_fake=1.5, iterations=2, width=32, height=32)
    info = student.model_options[STUDENT_INFO_KEY]
    assert (info.preset, info.timestep) == ("sid-lsg", 625)
    latent = OneStepGenerate.execute(student, [[prompts.conds[:1], {}]], 0, 1, 32, 32, "auto", 1, 0.0).result[0]
    assert torch.isfinite(latent["samples"]).all()


def test_saved_pack_student_loads_back_with_its_preset(pack_teacher, tmp_path, model_folder):
    student = train(pack_teacher, labels(), run_name="save")[0]
    model_folder("onestep", tmp_path / "models", is_default=True)
    path = OneStepSaveStudent.execute(student, "tiny_student").result[0]
    loaded = OneStepLoadPackModel.execute("tiny_student.safetensors").result[0]
    assert path.endswith("tiny_student.safetensors")
    assert loaded.model_options[STUDENT_INFO_KEY].preset == "edm"
    for key, value in weights(student).items():
        assert torch.equal(weights(loaded)[key], value), key


class TinyVSDXL(comfy.supported_models.SDXL):
    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION


def tiny_sdxl(comfy_host, prediction="eps"):
    family = comfy.supported_models.SDXL if prediction == "eps" else TinyVSDXL
    return comfy_host.tiny_model_patcher(family, comfy_host.TINY_SDXL_UNET_CONFIG)


def text_prompts(clip, *lines):
    return OneStepPromptSource.execute("text", "", "\n".join(lines), "", clip).result[0]


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sdxl_teachers_distill_with_pooled_text_and_size_conditioning(comfy_host, prediction):
    teacher, clip = tiny_sdxl(comfy_host, prediction), comfy_host.tiny_sdxl_clip()
    prompts = text_prompts(clip, "a red square", "a blue circle")
    assert prompts.pooled.shape == (2, comfy_host.TINY_POOLED_DIM)
    lsg = dict(method="sid-lsg", alpha=1.0, k4_eval_real=1.5, k2_k3_eval_fake=1.5, k1_train_fake=1.5, width=32,
               height=32, checkpoint_every=0)
    with torch.inference_mode():  # as ComfyUI runs every node: prompts and y are made as inference tensors
        student, _, _ = train(teacher, prompts, run_name=prediction, iterations=2, **lsg)
    info = student.model_options[STUDENT_INFO_KEY]
    assert (info.preset, info.timestep, info.steps) == ("sid-lsg", 625, 2)
    assert any(not torch.equal(a, b) for a, b in zip(weights(student).values(), weights(teacher).values()))
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red square"), return_pooled=True)
    conditioning = [[cond, {"pooled_output": pooled}]]  # what CLIPTextEncode gives an SDXL model
    latent = OneStepGenerate.execute(student, conditioning, 0, 1, 32, 32, "auto", 1, 0.0).result[0]
    assert latent["samples"].shape == (1, 4, 4, 4) and torch.isfinite(latent["samples"]).all()


def test_sdxl_conditions_carry_encode_adm_of_the_pooled_text_and_the_training_size(comfy_host):
    teacher, clip = tiny_sdxl(comfy_host), comfy_host.tiny_sdxl_clip()
    prompts = text_prompts(clip, "a red square", "a blue circle")
    conditions = sdxl_conditions(teacher.model, prompts, 48, 32)
    expected_y = teacher.model.encode_adm(pooled_output=prompts.pooled, width=48, height=32, crop_w=0, crop_h=0,
                                          target_width=48, target_height=32)
    assert torch.equal(conditions.conds["y"], expected_y) and torch.equal(conditions.conds["c_crossattn"],
                                                                          prompts.conds)
    assert conditions.uncond["y"].shape == (1, teacher.model.adm_channels)

    denoiser = ComfyDenoiser(teacher.model, "c_crossattn")
    x, sigma = torch.randn(2, 4, 4, 6), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        out = denoiser(x, sigma, conditions.conds)
        direct = teacher.model.apply_model(x, sigma, c_crossattn=prompts.conds, y=expected_y)
        other_size = denoiser(x, sigma, sdxl_conditions(teacher.model, prompts, 64, 64).conds)
        unconditional = denoiser(x, sigma, conditions.uncond)  # one row, shared by the batch
    assert torch.equal(out, direct) and not torch.equal(out, other_size) and unconditional.shape == x.shape


def test_sdxl_teacher_resume_repeats_the_uninterrupted_run(comfy_host):
    teacher, clip = tiny_sdxl(comfy_host), comfy_host.tiny_sdxl_clip()
    prompts = text_prompts(clip, "a red square", "a blue circle")
    lsg = dict(method="sid-lsg", alpha=1.0, k1_train_fake=1.5, k4_eval_real=1.5, width=32, height=32, batch_size=2)
    straight = weights(train(teacher, prompts, run_name="straight", iterations=3, **lsg)[0])
    train(teacher, prompts, run_name="split", iterations=2, **lsg)
    resumed = weights(train(teacher, prompts, run_name="split", iterations=3, **lsg)[0])
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key


def test_sdxl_teachers_refuse_prompts_without_pooled_output(comfy_host):
    teacher = tiny_sdxl(comfy_host)
    prompts = PromptSet(torch.randn(2, 7, 32), torch.zeros(1, 7, 32), "text")
    with pytest.raises(TrainerInputError, match="need CLIP's pooled output"):
        train(teacher, prompts)
    wrong = PromptSet(torch.randn(2, 7, 32), torch.zeros(1, 7, 32), "text", torch.randn(2, 8), torch.zeros(1, 8))
    with pytest.raises(TrainerInputError, match="1544-d y vector but the teacher expects 1552-d"):
        train(teacher, wrong)
