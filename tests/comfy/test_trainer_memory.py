"""The trainer's memory options on ComfyUI UNets: LoRA students saved merged, gradient checkpointing of the UNet's
blocks, and the copies announced to ComfyUI's model management."""

import copy
from pathlib import Path

import comfy.model_management
import comfy.supported_models
import comfy.utils
import comfy_host
import pytest
import torch
from onestep.distill.checkpoint import latest_checkpoint
from onestep.distill.lora import add_lora_adapters
from onestep.distill.memory import checkpoint_blocks
from onestep.nodes.distill_trainer import ComfyDenoiser, PromptSet, trainable_copy
from onestep.nodes.students import OneStepSaveStudent
from safetensors.torch import load_file
from trainer_helpers import train, weights

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is fastest on a busy CPU

TEXT = dict(method="sid", alpha=1.0, iterations=2, width=32, height=32, batch_size=2, checkpoint_every=0,
            preview_every=0)


def text_prompts():
    torch.manual_seed(1)
    return PromptSet(torch.randn(3, 7, 32), torch.zeros(1, 7, 32), "text")


def test_lora_student_is_saved_merged_as_plain_unet_weights(tiny_sd15, tmp_path, model_folder):
    student = train(tiny_sd15, text_prompts(), run_name="lora", lora_rank=2, **TEXT)[0]
    model_folder("diffusion_models", tmp_path / "unets", is_default=True)
    path = OneStepSaveStudent.execute(student, "lora_student").result[0]
    saved = comfy.utils.load_torch_file(path, safe_load=True)
    assert saved.keys() == tiny_sd15.model.diffusion_model.state_dict().keys()
    assert any(not torch.equal(saved[k], v) for k, v in weights(tiny_sd15).items()), "the adapters learned"

    reloaded = trainable_copy(tiny_sd15.model)
    reloaded.diffusion_model.load_state_dict(saved)
    x, sigma, context = torch.randn(2, 4, 4, 4), torch.tensor([1.0, 2.5]), torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = student.model.apply_model(x, sigma, c_crossattn=context)
        torch.testing.assert_close(reloaded.apply_model(x, sigma, c_crossattn=context), expected)


def test_gradient_checkpointing_of_a_comfy_unet_keeps_loss_and_gradients(tiny_sd15):
    plain = trainable_copy(ComfyDenoiser(tiny_sd15.model, "c_crossattn"))
    checkpointed = trainable_copy(ComfyDenoiser(tiny_sd15.model, "c_crossattn"))
    blocks = checkpointed.checkpointable_blocks()
    unet = checkpointed.base_model.diffusion_model
    assert len(blocks) == sum(len(block) for block in (*unet.input_blocks, unet.middle_block, *unet.output_blocks))
    checkpoint_blocks(checkpointed, blocks)
    x, sigma, context = torch.randn(2, 4, 4, 4), torch.tensor([0.5, 3.0]), torch.randn(2, 7, 32)
    losses = []
    for network in (plain, checkpointed):
        loss = network(x, sigma, context).square().sum()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_the_teacher_is_loaded_with_room_for_the_copies_and_optimizer(tiny_sd15, monkeypatch, lora_rank):
    calls = []
    real_load = comfy.model_management.load_models_gpu

    def recording_load(models, *args, **kwargs):
        calls.append((models, kwargs))
        return real_load(models, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", recording_load)
    train(tiny_sd15, text_prompts(), run_name=f"memory{lora_rank}", lora_rank=lora_rank, gradient_checkpointing=True,
          **TEXT)
    unet_bytes = sum(p.numel() * p.element_size() for p in tiny_sd15.model.diffusion_model.parameters())
    # teacher, generator, fake score, EMA, and a gradient and two Adam moments of both students' weights; LoRA
    # students and their EMA share the teacher's weights, and only the adapters have copies, gradients and moments
    adapters = sum(p.numel() * p.element_size() for name, p in
                   add_lora_adapters(copy.deepcopy(tiny_sd15.model.diffusion_model), 2).named_parameters()
                   if ".lora_" in name)
    expected = unet_bytes + 9 * adapters if lora_rank else 10 * unet_bytes
    assert calls == [([tiny_sd15], {"memory_required": expected, "force_full_load": True})]


def tiny_sd15_in(dtype: torch.dtype):
    """The tiny SD1.5 model as ComfyUI loads one on a GPU (fp16 / bf16 weights), its values bf16-representable."""
    patcher = comfy_host.tiny_model_patcher(comfy.supported_models.SD15)
    unet = patcher.model.diffusion_model
    unet.to(torch.bfloat16).to(dtype)
    unet.dtype = dtype
    return patcher


def test_a_half_precision_teacher_trains_float32_students_and_gives_a_student_in_its_dtype():
    trained = {}
    for dtype in (torch.float32, torch.bfloat16):
        teacher = tiny_sd15_in(dtype)
        before = weights(teacher)
        student, run_dir, *_ = train(teacher, text_prompts(), run_name=f"dtype_{dtype}", **TEXT)
        assert all(torch.equal(value, before[key]) for key, value in weights(teacher).items())
        assert student.model.get_dtype() == dtype and {v.dtype for v in weights(student).values()} == {dtype}
        trained[dtype] = load_file(latest_checkpoint(Path(run_dir)) / "generator_ema.safetensors")
    # the same float32 run (before the fix the bf16 teacher's students trained in bf16)
    assert {value.dtype for value in trained[torch.bfloat16].values()} == {torch.float32}
    for key, value in trained[torch.float32].items():
        assert torch.equal(trained[torch.bfloat16][key], value), key


def test_bf16_autocast_computes_in_bf16_and_keeps_float32_weights_and_adam_state(tiny_sd15):
    runs = {}
    for precision in ("fp32", "bf16"):
        _, run_dir, _ = train(tiny_sd15, text_prompts(), run_name=f"precision_{precision}", precision=precision,
                              **TEXT)
        runs[precision] = {name: load_file(latest_checkpoint(Path(run_dir)) / f"{name}.safetensors")
                           for name in ("generator", "optimizers")}
    bf16 = runs["bf16"]
    assert {v.dtype for part in bf16.values() for v in part.values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in bf16["generator"].values())
    differs = [k for k, v in runs["fp32"]["generator"].items() if not torch.equal(v, bf16["generator"][k])]
    assert differs, "the bf16 run computed differently (autocast took effect)"
