"""In-graph distillation: a teacher MODEL, prompts and a config in; a one-step student MODEL out.

The math and the loop live in ``distill/``; this module adapts ComfyUI's models to the denoiser
interface ``D(x, sigma, cond) -> x0`` and reports progress, previews, interrupts and checkpoints.
"""

import copy
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io

from ..distill.checkpoint import (
    CheckpointError,
    RunFolderLocked,
    checkpoint_config,
    config_difference,
    latest_checkpoint,
    run_lock,
)
from ..distill.conditions import condition_rows, condition_to, expand_rows, map_condition, take_rows
from ..distill.job import write_job
from ..distill.lora import adapter_parameter_count, has_lora, merged_copy
from ..distill.memory import training_memory_bytes
from ..distill.networks import EDMDenoiser
from ..distill.parametrization import DiscreteSchedule
from ..distill.student_file import StudentInfo
from ..distill.training import METHODS, DistillConfig, Distiller, DivergenceError
from ..safety.errors import SafetyInputError
from ..safety.prompts import prompt_length_problem, read_text_lines
from . import files
from .model_copies import base_model_copy
from .pack_models import PackEDMModel, PixelLatent, check_pixel_shape, edm_model_patcher
from .presets import STUDENT_INFO_KEY, schedule_of
from .training_images import grayscale_grid, training_curve

NODE = "OneStep Distill Trainer"
CONFIG = io.Custom("ONESTEP_DISTILL_CONFIG")
PROMPTS = io.Custom("ONESTEP_PROMPTS")
RUNS_FOLDER = "onestep_runs"
MAX_LABELS = 100_000  # labels a prompt source may expand to (ranges are checked before they are expanded)
MAX_PROMPTS = 100_000  # text prompts, each encoded once
LOG = logging.getLogger(__name__)


class TrainerInputError(ValueError):
    """Bad input to the trainer nodes; the message names the node and the fix."""


@dataclass
class PromptSet:
    """Conditions to distill on: class labels [N] or text embeddings [N, tokens, dim], and the unconditional one.

    Text prompts keep CLIP's pooled outputs [N, dim] too; for SDXL-style teachers the trainer turns them into
    model conditions: ``conds`` and ``uncond`` become dicts of ``c_crossattn`` and ``y`` (pooled text + sizes).
    """

    conds: torch.Tensor | dict
    uncond: torch.Tensor | dict | None  # for labels the trainer fills in the teacher's null class
    kind: str  # "labels" | "text"
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None

    @property
    def condition_key(self) -> str:
        return "y" if self.kind == "labels" else "c_crossattn"

    def sampler(self, device: torch.device):
        conds = condition_to(self.conds, device)
        rows = condition_rows(conds)

        def draw(count: int, generator: torch.Generator):
            index = torch.randint(rows, (count,), generator=generator, device=generator.device).to(device)
            return take_rows(conds, index)

        return draw


class ComfyDenoiser(torch.nn.Module):
    """D(x, sigma, cond) -> x0 through a ComfyUI BaseModel, which applies its own input scaling and parametrisation.

    ``cond`` is one tensor (passed as ``condition_key``) or a dict of apply_model's inputs (SDXL: c_crossattn, y).
    """

    def __init__(self, base_model: torch.nn.Module, condition_key: str):
        super().__init__()
        self.base_model = base_model
        self.condition_key = condition_key

    def __deepcopy__(self, memo):
        """New networks and weights, ComfyUI's config and other host objects shared (see ``model_copies``)."""
        copied = object.__new__(type(self))
        memo[id(self)] = copied
        base_model_copy(self.base_model, memo)
        vars(copied).update(copy.deepcopy(vars(self), memo))
        return copied

    def train(self, mode: bool = True):
        """The host network stays in eval mode: its train-mode behaviour is pre-training's (PixArt drops captions,
        on CUDA only), while SiD-LSG drops prompts itself; gradients flow either way."""
        super().train(mode)
        self.base_model.eval()
        return self

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | dict | None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        conditions = {} if cond is None else cond if isinstance(cond, dict) else {self.condition_key: cond}
        conditions = expand_rows(conditions, x.shape[0])  # the unconditional input is one row, shared by the batch
        return self.base_model.apply_model(x, sigma, **conditions)

    def checkpointable_blocks(self) -> list[torch.nn.Module]:
        """The layers inside the UNet's input, middle and output blocks (ResBlocks, transformers, resamplers)."""
        unet = self.base_model.diffusion_model
        if not hasattr(unet, "input_blocks"):
            raise TrainerInputError(f"{NODE}: gradient checkpointing supports UNet teachers; "
                                    f"{type(unet).__name__} has no input/middle/output blocks.")
        blocks = (*unet.input_blocks, unet.middle_block, *unet.output_blocks)
        return [layer for block in blocks for layer in block if any(True for _ in layer.parameters())]


def sdxl_conditions(base_model, prompts: PromptSet, width: int, height: int) -> PromptSet:
    """Prompts as an SDXL-style model takes them: c_crossattn plus y = encode_adm(pooled text, sizes, no crop)."""
    if prompts.pooled is None or prompts.uncond_pooled is None:
        raise TrainerInputError(f"{NODE}: {type(base_model).__name__} teachers need CLIP's pooled output with the "
                                "prompts; encode them with OneStep Prompt Source and this teacher's CLIP.")
    sizes = dict(width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height)

    def adm(pooled: torch.Tensor) -> torch.Tensor:
        y = base_model.encode_adm(pooled_output=pooled, **sizes)
        if y is None:
            raise TrainerInputError(f"{NODE}: {type(base_model).__name__} takes a y vector that is not built from "
                                    "pooled text and image sizes; supported: SD1.x/2.x, SDXL-style and the pack's "
                                    "EDM teachers.")
        return y.to(pooled.dtype)

    conds = {"c_crossattn": prompts.conds, "y": adm(prompts.pooled)}
    uncond = {"c_crossattn": prompts.uncond, "y": adm(prompts.uncond_pooled)}
    if conds["y"].shape[-1] != base_model.adm_channels:
        raise TrainerInputError(f"{NODE}: the prompts' pooled output gives a {conds['y'].shape[-1]}-d y vector but "
                                f"the teacher expects {base_model.adm_channels}-d; encode them with this teacher's "
                                "CLIP.")
    return PromptSet(conds, uncond, "text")


def ordinary_tensors(cond):
    """Copies that autograd may save: tensors made under ComfyUI's inference mode cannot be saved for backward."""
    with torch.inference_mode(False):
        return map_condition(torch.clone, cond)


def teacher_denoiser(teacher, prompts: PromptSet) -> torch.nn.Module:
    """A frozen float32 copy of the teacher as D(x, sigma, cond): the pack's own network where it is one (so
    checkpoints match those of a torchrun job), else ComfyUI's model behind its apply_model.

    Float32 whatever dtype ComfyUI loaded the teacher in (fp16 / bf16 on GPUs): the students are copies of it, and
    Adam's steps of about the learning rate round away in half precision (a step of 1e-5 leaves 96 % of bf16 and
    69 % of fp16 weights drawn from [-0.1, 0.1] unchanged). bf16 autocast still computes in bf16.
    """
    if isinstance(teacher.model, PackEDMModel):
        return trainable_copy(teacher.model.diffusion_model.denoiser).float().requires_grad_(False)
    denoiser = trainable_copy(ComfyDenoiser(teacher.model, prompts.condition_key)).requires_grad_(False)
    set_unet_dtype(denoiser.base_model, torch.float32)
    return denoiser


def set_unet_dtype(base_model, dtype: torch.dtype, manual_cast_dtype: torch.dtype | None = None) -> None:
    """Cast a ComfyUI model's UNet weights, and the dtypes its apply_model casts inputs to, to ``dtype``."""
    base_model.diffusion_model.to(dtype)
    base_model.diffusion_model.dtype = dtype
    base_model.manual_cast_dtype = manual_cast_dtype


def trainable_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy whose weights are ordinary tensors: loaders create inference tensors, which backward cannot save."""
    with torch.inference_mode(False):
        return base_model_copy(module) if isinstance(module, comfy.model_base.BaseModel) else copy.deepcopy(module)


def teacher_fingerprint(base_model: torch.nn.Module) -> str:
    """Names the teacher's weights for resume checks: class, size and a hash of a few tensors."""
    parameters = list(base_model.parameters())
    digest = hashlib.sha256()
    for tensor in (parameters[0], parameters[len(parameters) // 2], parameters[-1]):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return f"{type(base_model).__name__}:{sum(p.numel() for p in parameters)}:{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class TeacherNoise:
    """How the trainer sees a teacher's noise levels, and the preset its students sample with."""

    view: str  # "edm" | "ddpm"
    ddpm_table: str  # the DDPM alpha-bar table ("sd" | "pixart"); "sd" for EDM teachers (unused there)
    sigma_data: float | None  # an EDM teacher's data scale
    preset: str


def teacher_noise(teacher, schedule) -> TeacherNoise:
    """The view and table of the teacher's own schedule; a DDPM table the recipes do not know is refused."""
    if schedule.is_edm:
        return TeacherNoise("edm", "sd", float(schedule.model_sampling.sigma_data), "edm")
    if not schedule.is_ddpm:
        raise TrainerInputError(f"{NODE}: cannot distill a {type(teacher.model).__name__} with "
                                f"{type(schedule.model_sampling).__name__}; supported: EDM and DDPM (eps / v) "
                                "teachers.")
    table = "pixart" if schedule.is_pixart else "sd"
    own = schedule.model_sampling.sigmas.double().cpu()
    expected = DiscreteSchedule.named(table).sigmas
    if own.shape != expected.shape or not torch.allclose(own, expected, rtol=1e-4):
        raise TrainerInputError(f"{NODE}: this {type(teacher.model).__name__} teacher has a DDPM table "
                                f"({own.shape[0]} steps, sigma {float(own[-1]):.4g} at the last one) that is not the "
                                f"{table} table the {table} recipe is for; supported: SD1.x/2.x/SDXL and PixArt-alpha "
                                "schedules.")
    return TeacherNoise("ddpm", table, None, "sim-pixart" if table == "pixart" else "sid-lsg")


def check_teacher(teacher, prompts: PromptSet) -> tuple[TeacherNoise, PromptSet]:
    """How the trainer sees the teacher's noise levels, and the prompts completed for this teacher."""
    schedule = schedule_of(teacher)
    is_pack_model = isinstance(teacher.model, PackEDMModel)
    if prompts.kind == "labels":
        if not is_pack_model:
            raise TrainerInputError(f"{NODE}: class-label prompts fit the pack's class-conditional models; this "
                                    f"teacher is {type(teacher.model).__name__}. Use text prompts encoded with "
                                    "its CLIP.")
        num_classes = teacher.model.diffusion_model.denoiser.num_classes
        if int(prompts.conds.max()) >= num_classes:
            raise TrainerInputError(f"{NODE}: label {int(prompts.conds.max())} is out of range for a teacher with "
                                    f"{num_classes} classes (0..{num_classes - 1}).")
        prompts = PromptSet(prompts.conds, torch.tensor([num_classes]), "labels")
    if prompts.kind == "text":
        if is_pack_model:
            raise TrainerInputError(f"{NODE}: this teacher is class-conditional; use OneStep Prompt Source with "
                                    "class labels.")
        context_dim = teacher.model.model_config.unet_config.get("context_dim")
        if context_dim is not None and prompts.conds.shape[-1] != context_dim:
            raise TrainerInputError(f"{NODE}: the prompts were encoded to {prompts.conds.shape[-1]}-d embeddings but "
                                    f"the teacher expects {context_dim}-d; encode them with this teacher's CLIP.")
    return teacher_noise(teacher, schedule), prompts


def student_patcher(teacher, generator: torch.nn.Module, info: StudentInfo):
    """The (EMA) generator as a ComfyUI MODEL that OneStep Generate samples with the stored preset (LoRA merged)."""
    with torch.inference_mode(False):  # a copy of the live EMA network, with LoRA adapters merged in
        generator = merged_copy(generator) if has_lora(generator) else copy.deepcopy(generator)
    if isinstance(generator, EDMDenoiser):
        student = edm_model_patcher(generator)
    else:
        base_model = generator.base_model.requires_grad_(False).eval()
        set_unet_dtype(base_model, teacher.model.get_dtype(), teacher.model.manual_cast_dtype)  # as the teacher runs
        student = comfy.model_patcher.ModelPatcher(base_model, load_device=teacher.load_device,
                                                   offload_device=teacher.offload_device)
    student.model_options[STUDENT_INFO_KEY] = info
    return student


class OneStepDistillConfig(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepDistillConfig",
            display_name="OneStep Distill Config",
            category="OneStep/training",
            description="Settings of a SiD / SiD-LSG / SIM distillation run. A 0 in lr_generator, lr_fake_score, alpha "
                        "or ema_halflife_kimg takes the official recipe's value for the teacher (README, 'Recipes').",
            inputs=[
                io.Combo.Input("method", options=list(METHODS), default="sid",
                               tooltip="sid: Score identity Distillation. sid-lsg: SiD with long-short guidance "
                                       "(k1..k4). sim: Score Implicit Matching with a pseudo-Huber distance."),
                io.Int.Input("iterations", default=400, min=1, max=10_000_000,
                             tooltip="Iterations, each one fake-score step and one generator step."),
                io.Int.Input("batch_size", default=32, min=1, max=4096, tooltip="Samples per step."),
                io.Float.Input("lr_generator", default=0.0, min=0.0, max=1.0, step=1e-6, round=False,
                               tooltip="Adam learning rate of the generator. 0: the official recipe's (1e-5 for EDM "
                                       "teachers as SiD on CIFAR-10, 1e-6 for SD and PixArt teachers as SiD-LSG)."),
                io.Float.Input("lr_fake_score", default=0.0, min=0.0, max=1.0, step=1e-6, round=False,
                               tooltip="Adam learning rate of the fake score network. 0: the official recipe's "
                                       "(as lr_generator)."),
                io.Float.Input("alpha", default=0.0, min=0.0, max=10.0, step=0.05,
                               tooltip="SiD's alpha. 0: the official recipe's (1.2 for EDM teachers, 1.0 for SD, as "
                                       "SiD-LSG). SIM does not use it."),
                io.Float.Input("k1_train_fake", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="SiD-LSG: guidance of the fake network in its own training (cfg_train_fake)."),
                io.Float.Input("k2_k3_eval_fake", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="SiD-LSG: guidance of the fake network in the generator loss (cfg_eval_fake)."),
                io.Float.Input("k4_eval_real", default=1.0, min=0.0, max=20.0, step=0.1,
                               tooltip="SiD-LSG: guidance of the teacher in the generator loss (cfg_eval_real)."),
                io.Float.Input("sim_c", default=1e-3, min=0.0, max=100.0, step=1e-4, round=False,
                               tooltip="SIM: the pseudo-Huber constant c (score space)."),
                io.Int.Input("width", default=28, min=8, max=4096, step=4, tooltip="Training image width in pixels."),
                io.Int.Input("height", default=28, min=8, max=4096, step=4, tooltip="Training image height in pixels."),
                io.Combo.Input("precision", options=["fp32", "bf16"], default="fp32",
                               tooltip="bf16 runs the networks under autocast; weights and Adam's state stay fp32 (the "
                                       "pack's choice: the official fp16 mode trains fp16 weights with gradient "
                                       "clipping)."),
                io.Float.Input("ema_halflife_kimg", default=0.0, min=0.0, max=1_000_000.0, step=0.1,
                               tooltip="Half-life of the generator's EMA, in thousands of images, never more than 5% "
                                       "of the images seen so far (EDM's ramp-up). 0: the official recipe's (500 for "
                                       "EDM teachers as SiD on CIFAR-10, 50 for SD as SiD-LSG)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the whole run (noise, prompts)."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=1_000_000,
                             tooltip="Write a checkpoint every N iterations (0: only at the end and on interrupt)."),
                io.Int.Input("preview_every", default=25, min=0, max=1_000_000,
                             tooltip="Show EMA samples on fixed noise every N iterations (0: never)."),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024, optional=True,
                             tooltip="Micro-batches of batch_size per optimizer step: the step sees "
                                     "batch_size x grad_accumulation samples at the memory of one micro-batch."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute the UNet blocks' activations in backward instead of storing "
                                         "them: much less memory, about a third more time."),
                io.Boolean.Input("fused_adamw", default=False, optional=True,
                                 tooltip="Use the fused AdamW kernel (weight decay 0, so the same update as Adam); "
                                         "falls back to the unfused one where the device has no fused kernel."),
                io.Int.Input("lora_rank", default=0, min=0, max=1024, optional=True,
                             tooltip="0: train every weight. > 0: train LoRA adapters of this rank on the "
                                     "generator's and fake score's linear and conv layers; their frozen base "
                                     "weights are the teacher's own (one copy of the network instead of four). The "
                                     "saved student has the adapters merged in. Needs peft."),
            ],
            outputs=[CONFIG.Output(display_name="config", tooltip="Connect to OneStep Distill Trainer.")],
        )

    @classmethod
    def execute(cls, **settings) -> io.NodeOutput:
        return io.NodeOutput(dict(settings))


class OneStepPromptSource(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepPromptSource",
            display_name="OneStep Prompt Source",
            category="OneStep/training",
            description="What the student learns to generate: class labels for class-conditional teachers, or text "
                        "prompts (one per line, from the box or a file) encoded with the teacher's CLIP.",
            inputs=[
                io.Combo.Input("kind", options=["class labels", "text"], default="class labels",
                               tooltip="class labels: the pack's class-conditional teachers. text: SD-style teachers."),
                io.String.Input("labels", default="0-9", tooltip="Class labels, e.g. '0-9' or '0, 3, 7'."),
                io.String.Input("prompts", default="", multiline=True, tooltip="Text prompts, one per line."),
                io.String.Input("prompt_file", default="",
                                tooltip="Optional UTF-8 text file of prompts, one per line, under ComfyUI's input "
                                        "folder (a relative name; absolute paths and '..' are refused)."),
                io.Clip.Input("clip", optional=True, tooltip="The teacher's text encoder (text prompts only)."),
            ],
            outputs=[PROMPTS.Output(display_name="prompts", tooltip="Connect to OneStep Distill Trainer.")],
        )

    @classmethod
    def execute(cls, kind, labels, prompts, prompt_file, clip=None) -> io.NodeOutput:
        if kind == "class labels":
            return io.NodeOutput(PromptSet(parse_labels(labels), uncond=None, kind="labels"))
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if prompt_file.strip():
            lines += read_prompt_file(prompt_file.strip())
        if not lines:
            raise TrainerInputError("OneStep Prompt Source: the prompt list is empty; type prompts (one per line) "
                                    "or name a prompt file.")
        if len(lines) > MAX_PROMPTS:
            raise TrainerInputError(f"OneStep Prompt Source: {len(lines)} prompts, more than the {MAX_PROMPTS} "
                                    "accepted; use a sample of them.")
        for number, line in enumerate(lines, start=1):
            if problem := prompt_length_problem(line):
                raise TrainerInputError(f"OneStep Prompt Source: prompt {number}: {problem}.")
        if clip is None:
            raise TrainerInputError("OneStep Prompt Source: text prompts need the teacher's CLIP connected.")
        encoded = [encode(clip, line) for line in lines]
        uncond, uncond_pooled = encode(clip, "")
        conds = torch.cat([cond for cond, _ in encoded])
        pooled = torch.cat([pooled for _, pooled in encoded]) if uncond_pooled is not None else None
        return io.NodeOutput(PromptSet(conds, uncond, "text", pooled, uncond_pooled))


def parse_labels(text: str) -> torch.Tensor:
    """'0-9' or '0, 3, 7' as a tensor of labels; every range is checked before it is expanded."""
    node = "OneStep Prompt Source"
    ranges = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            first, last = int(first), int(last) if dash else int(first)
        except ValueError:
            raise TrainerInputError(f"{node}: cannot read '{part[:40]}' as a label or range (e.g. 0-9).") from None
        if first < 0 or last < first:
            raise TrainerInputError(f"{node}: '{part[:40]}' is not a range of non-negative labels, low-high "
                                    "(e.g. 0-9).")
        ranges.append((first, last))
    if not ranges:
        raise TrainerInputError(f"{node}: give at least one label, none negative; got '{text[:80]}'.")
    count = sum(last - first + 1 for first, last in ranges)
    if count > MAX_LABELS:
        raise TrainerInputError(f"{node}: labels '{text[:80]}' expand to {count} labels, more than the {MAX_LABELS} "
                                "accepted; give the teacher's class range (Fashion-MNIST: 0-9).")
    return torch.cat([torch.arange(first, last + 1) for first, last in ranges])


def read_prompt_file(name: str) -> list[str]:
    node = "OneStep Prompt Source"
    path = files.input_path(node, "prompt_file", name)
    if not path.is_file():
        raise TrainerInputError(f"{node}: no prompt file at {path}; put it in ComfyUI's input folder.")
    try:
        lines = read_text_lines(path)
    except SafetyInputError as error:
        raise TrainerInputError(f"{node}: prompt_file {error}") from None
    return [line.strip() for line in lines if line.strip()]


def encode(clip, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token embeddings [1, tokens, dim] and the pooled output [1, dim] (as CLIPTextEncode keeps it for SDXL)."""
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)


def recipe_value(settings: dict, name: str) -> float | None:
    """A config node value, or None (the official recipe's) where the node says 0."""
    return settings[name] or None


def distill_config(settings: dict, noise: TeacherNoise, sample_shape: tuple, teacher_id: str):
    sigma_data = {} if noise.sigma_data is None else {"sigma_data": noise.sigma_data}
    return DistillConfig(
        method=settings["method"], teacher_id=teacher_id, steps=settings["iterations"],
        batch_size=settings["batch_size"], sample_shape=sample_shape,
        lr_generator=recipe_value(settings, "lr_generator"), lr_fake_score=recipe_value(settings, "lr_fake_score"),
        alpha=recipe_value(settings, "alpha"), view=noise.view, ddpm_table=noise.ddpm_table, **sigma_data,
        k_train_fake=settings["k1_train_fake"], k_eval_fake=settings["k2_k3_eval_fake"],
        k_eval_real=settings["k4_eval_real"], sim_c=settings["sim_c"],
        ema_halflife_kimg=recipe_value(settings, "ema_halflife_kimg"), seed=settings["seed"],
        checkpoint_every=settings["checkpoint_every"], preview_every=settings["preview_every"],
        grad_accumulation=settings.get("grad_accumulation", 1),
        gradient_checkpointing=settings.get("gradient_checkpointing", False),
        fused_adamw=settings.get("fused_adamw", False), lora_rank=settings.get("lora_rank", 0),
    )


class OneStepDistillTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepDistillTrainer",
            display_name="OneStep Distill Trainer",
            category="OneStep/training",
            description="Distill the teacher into a one-step student (SiD / SiD-LSG / SIM). Progress and EMA previews "
                        "show on the node; Cancel ends the current iteration, writes a checkpoint and stops; "
                        "'resume' continues a run.",
            inputs=[
                io.Model.Input("teacher", tooltip="The teacher, used frozen (EDM or DDPM eps/v models)."),
                PROMPTS.Input("prompts", tooltip="From OneStep Prompt Source."),
                CONFIG.Input("config", tooltip="From OneStep Distill Config."),
                io.String.Input("run_name", default="fmnist_sid",
                                tooltip="Checkpoints go to output/onestep_runs/<run_name> (a plain folder name). The "
                                        "folder is locked while a run writes it."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the run folder's latest checkpoint when there is one "
                                         "(iterations must be at least the steps already done)."),
            ],
            outputs=[
                io.Model.Output("student", display_name="student",
                                tooltip="The EMA generator: sample it with OneStep Generate."),
                io.String.Output("run_folder", display_name="run_folder", tooltip="Where the checkpoints are."),
                io.Image.Output("curve", display_name="curve",
                                tooltip="Generator and fake-score losses (they swing: judge by samples)."),
                io.String.Output("report", display_name="report",
                                 tooltip="Steps trained and how many samples were non-finite and dropped (also in "
                                         "the log)."),
            ],
        )

    @classmethod
    def execute(cls, teacher, prompts, config, run_name, resume) -> io.NodeOutput:
        run_dir = run_folder(run_name)
        settings, preset, prompts = run_settings(teacher, prompts, config)
        check_training_memory(teacher, settings)
        latent_format = teacher.get_model_object("latent_format")
        with locked_run_folder(NODE, run_dir):
            reserve_training_memory(teacher, settings)
            distiller, start, history = train_in_graph(teacher, prompts, settings, config, run_dir, resume,
                                                       latent_format)
        info = StudentInfo(preset=preset, sigma=settings.init_sigma, timestep=settings.recipe().init_timestep,
                           method=settings.method, teacher=settings.teacher_id, steps=distiller.step)
        report = run_report(distiller, start, history, run_dir)
        student = student_patcher(teacher, distiller.ema.module, info)
        del distiller
        comfy.model_management.soft_empty_cache()
        return io.NodeOutput(student, str(run_dir), training_curve(history, start + 1), report)


def train_in_graph(teacher, prompts, settings: DistillConfig, config: dict, run_dir: Path, resume: bool,
                   latent_format):
    """Build the Distiller, resume it, train; a Cancel ends the current iteration, writes a checkpoint and stops."""
    device = teacher.load_device
    with torch.inference_mode(False), torch.enable_grad():
        distiller = Distiller(teacher_denoiser(teacher, prompts), settings, cond_sampler=prompts.sampler(device),
                              uncond=condition_to(prompts.uncond, device))
        start = resume_or_refuse(distiller, run_dir, resume, settings.steps)
        progress = comfy.utils.ProgressBar(settings.steps)
        progress.update_absolute(distiller.step, settings.steps)
        previewer = latent_preview.get_previewer(device, latent_format)
        saved = {"step": start if latest_checkpoint(run_dir) is not None else None}

        def on_preview(step, samples):
            progress.update_absolute(step, settings.steps, preview_image(samples, latent_format, previewer))

        def on_checkpoint(step):
            saved["step"] = step

        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16"):
                history = distiller.train(
                    run_dir, on_progress=lambda step, total, _: progress.update_absolute(step, total),
                    on_preview=on_preview, on_checkpoint=on_checkpoint,
                    should_stop=comfy.model_management.processing_interrupted,
                )
        except comfy.model_management.InterruptProcessingException:
            # ComfyUI's progress hook raises the interrupt inside on_progress, after an iteration completed:
            # keep that iteration, then let the interrupt stop the prompt
            if distiller.step > start and saved["step"] != distiller.step:
                distiller.save(run_dir)
            LOG.info("%s: interrupted at step %d; checkpoint %s written", NODE, distiller.step, run_dir)
            raise
        except DivergenceError as error:
            kept = latest_checkpoint(run_dir)
            where = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was written"
            LOG.error("%s: %s", NODE, error)
            raise TrainerInputError(f"{NODE}: {error}. The run stopped: {where}. Lower lr_generator / lr_fake_score "
                                    "(SiD: 1e-5 for EDM teachers, 1e-6 for SD) and resume, or start a new run_name."
                                    ) from None
    comfy.model_management.throw_exception_if_processing_interrupted()
    return distiller, start, history


def run_report(distiller: Distiller, start: int, history: list[dict], run_dir: Path) -> str:
    """One line on the run: steps, non-finite samples dropped (also logged as a warning), where it is kept."""
    drawn = 2 * distiller.global_batch * len(history)
    dropped = sum(entry["dropped"] for entry in history)
    report = (f"{NODE}: steps {start} -> {distiller.step} in {run_dir}; {dropped} of {drawn} samples of this run "
              f"were non-finite and dropped ({distiller.dropped_samples} over the whole run)")
    if dropped:
        report += ("; lower the learning rates if this grows (the run stops after "
                   f"{distiller.config.max_nonfinite_steps} steps in a row without a finite sample)")
        LOG.warning(report)
    else:
        LOG.info(report)
    return report


class locked_run_folder:
    """Hold the run folder's lock (one writer at a time, across processes and servers) for a node."""

    def __init__(self, node: str, run_dir: Path):
        self.node, self.run_dir = node, run_dir

    def __enter__(self):
        self.lock = run_lock(self.run_dir, owner=f"ComfyUI node {self.node}")
        try:
            return self.lock.__enter__()
        except RunFolderLocked as error:
            raise TrainerInputError(f"{self.node}: {error}.") from None

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def run_settings(teacher, prompts: PromptSet, config: dict) -> tuple[DistillConfig, str, PromptSet]:
    """The DistillConfig of a run (from the config node and the teacher), the student's preset, the prompts."""
    check_config(config)
    noise, prompts = check_teacher(teacher, prompts)
    if getattr(teacher.model, "adm_channels", 0):
        prompts = sdxl_conditions(teacher.model, prompts, config["width"], config["height"])
    prompts = PromptSet(ordinary_tensors(prompts.conds), ordinary_tensors(prompts.uncond), prompts.kind)
    latent_format = teacher.get_model_object("latent_format")
    downscale = getattr(latent_format, "spacial_downscale_ratio", 8)
    sample_shape = (latent_format.latent_channels, config["height"] // downscale, config["width"] // downscale)
    if isinstance(teacher.model, PackEDMModel):
        check_pixel_shape(NODE, teacher.model.diffusion_model.denoiser, (1, *sample_shape))
    try:
        settings = distill_config(config, noise, sample_shape, teacher_fingerprint(teacher.model))
    except ValueError as error:
        raise TrainerInputError(f"{NODE}: {error}") from None
    return settings, noise.preset, prompts


def check_config(config: dict) -> None:
    """Values the config node's ranges let through: NaN / infinite floats, negative seeds or counts."""
    for name, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainerInputError(f"{NODE}: config value {name} = {value} is not a finite number; set it in OneStep "
                                    "Distill Config (e.g. lr_generator 1e-5).")
    for name in ("seed", "iterations", "batch_size", "checkpoint_every", "preview_every"):
        value = config.get(name)
        if isinstance(value, int) and value < (1 if name in ("iterations", "batch_size") else 0):
            raise TrainerInputError(f"{NODE}: config value {name} = {value} is out of range; use "
                                    f"{'1 or more' if name in ('iterations', 'batch_size') else '0 or more'}.")


def training_memory(teacher, settings: DistillConfig) -> int:
    """Bytes the run's copies of the teacher and the optimizer state take (activations aside)."""
    network = teacher.model.diffusion_model
    float32 = 4  # bytes: the trainer's copies are float32 whatever the teacher's dtype
    return training_memory_bytes(float32 * sum(p.numel() for p in network.parameters()),
                                 float32 * adapter_parameter_count(network, settings.lora_rank))


def activation_memory(teacher, settings: DistillConfig) -> int:
    """Bytes of activations of one micro-batch: ComfyUI's own estimate of a forward pass (``memory_required``, as its
    samplers reserve) for each of the three networks the generator step runs with gradients through them."""
    shape = [settings.batch_size, *settings.sample_shape]
    return int(3 * teacher.model.memory_required(shape))


def check_training_memory(teacher, settings: DistillConfig) -> None:
    """Refuse, before anything is allocated, a run whose estimate exceeds the device's memory."""
    device = teacher.load_device
    copies, activations = training_memory(teacher, settings), activation_memory(teacher, settings)
    limit = comfy.model_management.get_total_memory(device)
    if copies + activations > limit:
        gib = 2**30
        height, width = settings.sample_shape[-2:]
        raise TrainerInputError(
            f"{NODE}: this run needs about {(copies + activations) / gib:.1f} GiB ({copies / gib:.1f} GiB for the "
            f"networks and Adam state, {activations / gib:.1f} GiB for the activations of a batch of "
            f"{settings.batch_size} at {width}x{height} latent pixels) but {device} has {limit / gib:.1f} GiB. Lower "
            "batch_size (grad_accumulation keeps the samples per step), width and height, or use lora_rank / "
            "gradient_checkpointing.")


def reserve_training_memory(teacher, settings: DistillConfig) -> None:
    """Load the teacher through ComfyUI's model management with room for the copies, so it offloads other models."""
    comfy.model_management.load_models_gpu([teacher], memory_required=training_memory(teacher, settings),
                                           force_full_load=True)


class OneStepExportTrainingJob(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepExportTrainingJob",
            display_name="OneStep Export Training Job",
            category="OneStep/training",
            description="Write the run as a self-contained folder (config, teacher, prompts, checkpoints) for "
                        "several GPUs: torchrun --nproc_per_node N -m <pack folder>.distill.cli JOB_DIR. The folder "
                        "is also the trainer's run folder, so each side resumes the other. Pack EDM teachers only.",
            inputs=[
                io.Model.Input("teacher", tooltip="A pack EDM teacher (OneStep Load Pack Model)."),
                PROMPTS.Input("prompts", tooltip="From OneStep Prompt Source."),
                CONFIG.Input("config", tooltip="From OneStep Distill Config; batch_size is per process."),
                io.String.Input("run_name", default="fmnist_sid",
                                tooltip="The job goes to output/onestep_runs/<run_name> (checkpoints there stay)."),
            ],
            outputs=[
                io.String.Output("job_dir", display_name="job_dir", tooltip="The job folder."),
                io.String.Output("command", display_name="command",
                                 tooltip="The command that runs it, from ComfyUI's custom_nodes folder."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, teacher, prompts, config, run_name) -> io.NodeOutput:
        node = "OneStep Export Training Job"
        if not isinstance(teacher.model, PackEDMModel):
            raise TrainerInputError(f"{node}: only the pack's own EDM teachers can run outside ComfyUI; train other "
                                    "teachers with OneStep Distill Trainer.")
        settings, _, prompts = run_settings(teacher, prompts, config)
        run_dir = run_folder(run_name, node)
        with locked_run_folder(node, run_dir):
            refuse_other_run(node, run_dir, settings)
            folder = write_job(run_dir, settings, teacher.model.diffusion_model.denoiser, prompts.conds,
                               prompts.uncond)
        pack = Path(__file__).resolve().parents[1].name
        return io.NodeOutput(str(folder), f"torchrun --nproc_per_node 2 -m {pack}.distill.cli {folder}")


def refuse_other_run(node: str, run_dir: Path, settings: DistillConfig) -> None:
    """A job must continue the checkpoints already in its folder: same method, teacher, sizes and settings."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return
    try:
        recorded = checkpoint_config(latest)
    except CheckpointError as error:
        raise TrainerInputError(f"{node}: {error}") from None
    difference = config_difference(settings.to_dict(), DistillConfig().to_dict() | recorded, DistillConfig.RESUMABLE)
    if difference is not None:
        raise TrainerInputError(f"{node}: {run_dir} holds checkpoints of another run ({difference}); the job would "
                                "not be able to resume them. Use the same settings, or choose another run_name.")


def run_folder(run_name: str, node: str = NODE) -> Path:
    name = files.plain_name(node, "run_name", run_name, f"output/{RUNS_FOLDER}")
    if name in (".", ".."):
        raise TrainerInputError(f"{node}: run_name '{run_name}' must be a plain folder name, e.g. fmnist_sid.")
    return files.inside(Path(folder_paths.get_output_directory()) / RUNS_FOLDER, PurePosixPath(name))


def resume_or_refuse(distiller: Distiller, run_dir: Path, resume: bool, iterations: int) -> int:
    """Resume from the run folder's latest checkpoint; refuse to overwrite one when resume is off, and refuse
    ``iterations`` below the steps the folder already holds (that would silently return the old student)."""
    if latest_checkpoint(run_dir) is None:
        return 0
    if not resume:
        raise TrainerInputError(f"{NODE}: {run_dir} already holds checkpoints; turn 'resume' on to continue that "
                                "run, or choose another run_name.")
    try:
        distiller.resume(run_dir)
    except Exception as error:
        raise TrainerInputError(f"{NODE}: cannot resume from {run_dir}: {error}") from None
    if distiller.step > iterations:
        raise TrainerInputError(f"{NODE}: iterations {iterations} is below the {distiller.step} steps {run_dir} "
                                f"already holds; set iterations to {distiller.step} or more to continue it (or "
                                f"{distiller.step} to get that student back), or choose another run_name.")
    return distiller.step


def preview_image(samples: torch.Tensor, latent_format, previewer):
    if isinstance(latent_format, PixelLatent):
        return ("JPEG", grayscale_grid(samples), 512)
    return previewer.decode_latent_to_preview_image("JPEG", samples) if previewer else None
