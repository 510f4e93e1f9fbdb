"""OneStep Distill Trainer on an SD1.5-size UNet on CUDA, with the memory options the SD1.5 workflow uses: bf16
autocast (the networks compute in bf16), fused AdamW and gradient checkpointing, with float32 master weights and Adam
state, and ComfyUI's model management loading the teacher with room for the run (other models offloaded first)."""

import hashlib
from pathlib import Path

import comfy.model_management
import comfy.sd
import pytest
import torch
from onestep.distill import memory
from onestep.distill.checkpoint import latest_checkpoint
from onestep.distill.training import DistillConfig
from onestep.nodes import distill_trainer
from onestep.nodes.distill_trainer import OneStepDistillConfig, OneStepDistillTrainer, PromptSet
from safetensors.torch import load_file

SETTINGS = dict(method="sid", iterations=1, lr_generator=1e-4, lr_fake_score=1e-4, alpha=1.0, k1_train_fake=1.0,
                k2_k3_eval_fake=1.0, k4_eval_real=1.0, sim_c=1e-3, precision="bf16", ema_halflife_kimg=0.5, seed=0,
                checkpoint_every=0, preview_every=0, grad_accumulation=1, gradient_checkpointing=True,
                fused_adamw=True, lora_rank=0)


def fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for parameter in list(module.parameters())[::50]:
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class Recorder:
    """What the run did: output dtypes of the networks' layers, checkpointed blocks, fused optimizers."""

    def __init__(self, monkeypatch):
        self.layer_dtypes, self.checkpointed, self.fused = set(), 0, []
        real_checkpoint, real_adamw = memory.checkpoint, torch.optim.AdamW

        def counting_checkpoint(*args, **kwargs):
            self.checkpointed += 1
            return real_checkpoint(*args, **kwargs)

        def recording_adamw(*args, **kwargs):
            optimizer = real_adamw(*args, **kwargs)
            self.fused.append(bool(optimizer.defaults.get("fused")))
            return optimizer

        monkeypatch.setattr(memory, "checkpoint", counting_checkpoint)
        monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)

    def layer_hook(self, module, inputs, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and isinstance(output, torch.Tensor) and \
                output.requires_grad:
            self.layer_dtypes.add(output.dtype)


def test_a_bf16_fused_checkpointed_iteration_keeps_float32_weights(sd15_unet, context_dim, scale, monkeypatch,
                                                                    caplog):
    teacher = sd15_unet
    teacher_dtype = teacher.model.get_dtype()
    before = fingerprint(teacher.model.diffusion_model)
    generator = torch.Generator().manual_seed(0)
    prompts = PromptSet(torch.randn(3, 77, context_dim, generator=generator), torch.zeros(1, 77, context_dim), "text")
    config = OneStepDistillConfig.execute(**SETTINGS, batch_size=scale.train_batch, width=scale.train_size,
                                          height=scale.train_size).result[0]
    recorder = Recorder(monkeypatch)
    hook = torch.nn.modules.module.register_module_forward_hook(recorder.layer_hook)
    if not scale.dry:
        torch.cuda.reset_peak_memory_stats()
    try:
        with caplog.at_level("WARNING"), torch.inference_mode():  # every ComfyUI node runs under inference mode
            student, run_dir, *_ = OneStepDistillTrainer.execute(teacher, prompts, config, "gpu_bf16", False).result
    finally:
        hook.remove()

    assert recorder.fused == [True, True], "generator and fake score each get a fused AdamW"
    assert not [r for r in caplog.records if "fused AdamW is not supported" in r.getMessage()]
    assert recorder.checkpointed > 0, "the UNet blocks ran under activation checkpointing"
    assert torch.bfloat16 in recorder.layer_dtypes, f"autocast did not compute in bf16: {recorder.layer_dtypes}"

    checkpoint = latest_checkpoint(Path(run_dir))
    saved = {name: load_file(checkpoint / f"{name}.safetensors") for name in ("generator", "fake_score",
                                                                               "generator_ema", "optimizers")}
    dtypes = {v.dtype for part in saved.values() for v in part.values() if v.is_floating_point()}
    assert dtypes == {torch.float32}, f"master weights and Adam state must stay float32: {dtypes}"
    assert all(torch.isfinite(v).all() for part in saved.values() for v in part.values() if v.is_floating_point())
    teacher_weights = {f"base_model.diffusion_model.{k}": v.float().cpu()
                       for k, v in teacher.model.diffusion_model.state_dict().items()}
    shared = teacher_weights.keys() & saved["generator"].keys()
    assert len(shared) == len(teacher_weights), "the generator checkpoint holds every UNet weight"
    changed = [k for k in shared if not torch.equal(saved["generator"][k], teacher_weights[k])]
    assert len(changed) > len(shared) // 2, "one Adam step at lr 1e-4 must move the generator's float32 weights"

    assert fingerprint(teacher.model.diffusion_model) == before, "the teacher's weights must not change"
    assert student.model.get_dtype() == teacher_dtype, "the student comes back in the teacher's dtype"
    if not scale.dry:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"SD1.5-size bf16 iteration, batch {scale.train_batch}, {scale.train_size} px: peak {peak:.1f} GiB")


@pytest.fixture
def other_model(scale):
    """Another model ComfyUI has loaded on the GPU (a VAE), which a training run should push out."""
    from random_models import random_sd_vae_state_dict

    vae = comfy.sd.VAE(sd=random_sd_vae_state_dict())
    comfy.model_management.load_models_gpu([vae.patcher])
    return vae.patcher


def loaded(patcher) -> bool:
    return any(model is patcher for model in comfy.model_management.loaded_models())


def on_load_device(patcher) -> bool:
    return all(p.device == patcher.load_device for p in patcher.model.parameters())


def test_the_teacher_is_loaded_with_room_for_the_run_and_other_models_make_way(sd15_unet, other_model, scale,
                                                                               monkeypatch):
    mm = comfy.model_management
    teacher = sd15_unet
    mm.unload_all_models()
    mm.load_models_gpu([other_model])
    assert loaded(other_model) and on_load_device(other_model)
    settings = DistillConfig()
    parameters = sum(p.numel() for p in teacher.model.diffusion_model.parameters())
    needed = distill_trainer.training_memory(teacher, settings)
    assert needed == 10 * 4 * parameters  # teacher, generator, fake score, EMA, gradients and Adam moments, float32

    distill_trainer.reserve_training_memory(teacher, settings)  # the trainer node's own call, the real requirement
    assert loaded(teacher) and on_load_device(teacher), "the teacher is loaded whole (force_full_load)"
    if scale.dry:
        return
    assert mm.get_free_memory(teacher.load_device) >= needed, "room for the run's copies was left free"
    assert loaded(other_model), f"{needed / 2**30:.0f} GiB fit beside the VAE on this GPU: nothing is pushed out"

    # A run needing more than is free: ComfyUI must offload the other model first, and still load the teacher whole.
    mm.unload_all_models()
    mm.load_models_gpu([other_model])
    other_bytes = sum(p.numel() * p.element_size() for p in other_model.model.parameters())
    too_much = mm.get_free_memory(teacher.load_device) + other_bytes // 2
    monkeypatch.setattr(distill_trainer, "training_memory", lambda *_: too_much)
    distill_trainer.reserve_training_memory(teacher, settings)
    assert not loaded(other_model), "the other model must make way for the run"
    assert all(p.device == other_model.offload_device for p in other_model.model.parameters())
    assert loaded(teacher) and on_load_device(teacher)
