"""Noise levels of the one-step presets, resolved against a ComfyUI MODEL's own schedule."""

import re
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_base
import comfy.model_sampling
import comfy.supported_models
import torch

from ..distill.one_step import (
    SIGMA_INIT_EDM,
    TIMESTEP_INIT_SID_LSG,
    ancestral_levels,
    euler_levels,
    multistep_levels,
    multistep_timesteps,
    renoise_levels,
    tcd_timesteps,
    trailing_timesteps,
)
from ..distill.student_file import StudentInfo


@dataclass(frozen=True)
class FewStepPreset:
    """A published few-step student: its base family, timesteps, update rule, first input and parametrisation.

    ``start`` is how the first input is made from unit noise z: "unit" feeds z itself as the sample at the first
    timestep (diffusers' LCM / TCD / DDIM schedulers, init_noise_sigma 1), "sigma" feeds sigma * z in the
    variance-exploding view (diffusers' Euler schedulers with trailing spacing, init_noise_sigma = sigma_max).
    """

    families: tuple[str, ...]
    timesteps: Callable[[int], list[int]]
    rule: str  # "renoise" (LCM), "euler" (Euler / DDIM eta 0), "ancestral" (Euler ancestral), "tcd"
    start: str
    steps: tuple[int, ...]
    student: str
    source: str
    gamma: float = 0.0  # TCD's eta (gamma in the paper)
    x0: bool = False  # the network predicts x0 (diffusers prediction_type "sample")


def fixed(*timesteps: int) -> Callable[[int], list[int]]:
    return lambda steps: list(timesteps)


# Each entry: the official inference code's scheduler, timesteps and parametrisation (README, "Few-step students").
FEW_STEP_PRESETS = {
    # stabilityai/sd-turbo scheduler_config.json: EulerDiscreteScheduler, trailing, epsilon; 1-4 steps, cfg 0
    "sd-turbo": FewStepPreset(("sd2",), trailing_timesteps, "euler", "sigma", (1, 2, 3, 4), "SD-Turbo",
                              "stabilityai/sd-turbo scheduler_config.json (EulerDiscrete, trailing)"),
    # stabilityai/sdxl-turbo scheduler_config.json: EulerAncestralDiscreteScheduler, trailing, epsilon; 1-4 steps
    "sdxl-turbo": FewStepPreset(("sdxl",), trailing_timesteps, "ancestral", "sigma", (1, 2, 3, 4), "SDXL-Turbo",
                                "stabilityai/sdxl-turbo scheduler_config.json (EulerAncestralDiscrete, trailing)"),
    # tianweiy/DMD2 README: LCMScheduler, num_inference_steps=1, timesteps=[399] (dmd2_sdxl_1step_unet)
    "dmd2-sdxl-1step": FewStepPreset(("sdxl",), fixed(399), "renoise", "unit", (1,), "DMD2 SDXL 1-step UNet",
                                     "tianweiy/DMD2 README (LCMScheduler, timesteps=[399])"),
    # tianweiy/DMD2 README: LCMScheduler, timesteps=[999, 749, 499, 249] (4-step UNet and LoRA)
    "dmd2-sdxl-4step": FewStepPreset(("sdxl",), fixed(999, 749, 499, 249), "renoise", "unit", (4,),
                                     "DMD2 SDXL 4-step UNet / LoRA",
                                     "tianweiy/DMD2 README (LCMScheduler, timesteps=[999, 749, 499, 249])"),
    # ByteDance/Hyper-SD README: Hyper-SDXL-1step-Unet with LCMScheduler, timesteps=[800]
    "hyper-sdxl-1step": FewStepPreset(("sdxl",), fixed(800), "renoise", "unit", (1,), "Hyper-SDXL 1-step UNet",
                                      "ByteDance/Hyper-SD README (LCMScheduler, timesteps=[800])"),
    # ByteDance/Hyper-SD README: N-step LoRAs with DDIMScheduler, timestep_spacing="trailing" (eta 0), cfg 0
    "hyper-sd-nstep": FewStepPreset(("sd15", "sdxl"), trailing_timesteps, "euler", "unit", (2, 4, 8),
                                    "Hyper-SD / Hyper-SDXL 2-, 4-, 8-step LoRA",
                                    "ByteDance/Hyper-SD README (DDIMScheduler, trailing, eta 0)"),
    # ByteDance/Hyper-SD README: 1-step unified LoRA with TCDScheduler, eta=1.0 (any step count)
    "hyper-sd-1step-tcd": FewStepPreset(("sd15", "sdxl"), tcd_timesteps, "tcd", "unit", tuple(range(1, 9)),
                                        "Hyper-SD / Hyper-SDXL 1-step unified LoRA",
                                        "ByteDance/Hyper-SD README (TCDScheduler, eta=1.0)", gamma=1.0),
    # ByteDance/SDXL-Lightning README: EulerDiscreteScheduler, trailing, epsilon, 2/4/8-step UNet or LoRA
    "sdxl-lightning": FewStepPreset(("sdxl",), trailing_timesteps, "euler", "sigma", (2, 4, 8),
                                    "SDXL-Lightning 2-, 4-, 8-step UNet / LoRA",
                                    "ByteDance/SDXL-Lightning README (EulerDiscrete, trailing)"),
    # ByteDance/SDXL-Lightning README: the 1-step UNet with prediction_type="sample" (x0), trailing, 1 step
    "sdxl-lightning-1step-x0": FewStepPreset(("sdxl",), trailing_timesteps, "euler", "sigma", (1,),
                                             "SDXL-Lightning 1-step UNet (x0)",
                                             "ByteDance/SDXL-Lightning README (EulerDiscrete, trailing, "
                                             "prediction_type='sample')", x0=True),
    # h1t/TCD-SD15-LoRA, TCD-SD21-base-LoRA, TCD-SDXL-LoRA model cards: TCDScheduler, eta=0.3, 4 steps, cfg 0
    "tcd": FewStepPreset(("sd15", "sd2", "sdxl"), tcd_timesteps, "tcd", "unit", tuple(range(1, 9)),
                         "TCD LoRA (SD1.5, SD2.1-base, SDXL)", "h1t/TCD-SDXL-LoRA model card (TCDScheduler, eta=0.3)",
                         gamma=0.3),
}
RULE_LEVELS = {"renoise": renoise_levels, "euler": euler_levels, "ancestral": ancestral_levels}
FAMILY_NAMES = {"sd15": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL"}
# File names of the official releases (and their common renames), checked in order: the first match wins
FILE_NAME_PRESETS = [
    (r"lightning.*1step.*x0|lightning.*x0.*1step", "sdxl-lightning-1step-x0"),
    (r"lightning", "sdxl-lightning"),
    (r"dmd2.*1step", "dmd2-sdxl-1step"),
    (r"dmd2.*4step", "dmd2-sdxl-4step"),
    (r"hyper.*sdxl.*1step.*unet", "hyper-sdxl-1step"),
    (r"hyper.*1step.*lora", "hyper-sd-1step-tcd"),
    (r"hyper(?!.*cfg).*[248]steps?", "hyper-sd-nstep"),
    (r"sd_?xl[_-]?turbo", "sdxl-turbo"),
    (r"sd[_-]?turbo|sd2[._]?1[_-]?turbo", "sd-turbo"),
    (r"(^|[^a-z])tcd([^a-z]|$)", "tcd"),
]

PRESETS = ["auto", "sid-lsg", "edm", "sim-pixart", *FEW_STEP_PRESETS, "custom-sigma", "custom-timestep"]
PRESET_TOOLTIP = (
    "auto: the preset stored in the student file, else one recognised from the file name (OneStep Load Student), "
    "else edm for EDM models and sim-pixart for PixArt; an SD1.5 / SD2.x / SDXL model from another loader, or one "
    "with a LoRA, says nothing of which student it is: choose its preset. "
    "sid-lsg: SD1.5 / SD2.1-base students, timestep 625 (sigma 2.5017). "
    "edm: EDM-style SiD students, sigma 2.5. "
    "sim-pixart: SIM-DiT (PixArt-alpha), the discrete timestep nearest sigma 2.5. "
    "sd-turbo (1-4 steps, Euler, trailing 999..), sdxl-turbo (1-4 steps, Euler ancestral), "
    "dmd2-sdxl-1step (timestep 399), dmd2-sdxl-4step (999, 749, 499, 249; steps 4), "
    "hyper-sdxl-1step (800), hyper-sd-nstep (DDIM trailing; steps 2, 4 or 8 = the LoRA's), "
    "hyper-sd-1step-tcd (TCD, gamma 1), sdxl-lightning (Euler trailing; steps 2, 4 or 8 = the file's), "
    "sdxl-lightning-1step-x0 (the x0-prediction 1-step UNet, 999), tcd (TCD LoRAs, gamma 0.3): each with the "
    "official pipeline's timesteps and update rule (README table). LoRA students: the stock LoRA loader in front. "
    "custom-sigma / custom-timestep: use the value below."
)
STUDENT_INFO_KEY = "onestep_student"
"""Key under which OneStep Load Student leaves the file's metadata in the clone's model_options."""


class PresetError(ValueError):
    """A preset that does not fit the model, with the fix in the message."""


@dataclass(frozen=True)
class Schedule:
    """What the presets need to know about a model's noise schedule."""

    model_sampling: torch.nn.Module
    is_pixart: bool

    @property
    def is_ddpm(self) -> bool:
        """A discrete DDPM alpha-bar table with epsilon- or v-prediction (SD1.x, SD2.x, SDXL, PixArt)."""
        ms = self.model_sampling
        return (
            isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete)
            and not isinstance(ms, comfy.model_sampling.ModelSamplingDiscreteEDM)
            and isinstance(ms, comfy.model_sampling.EPS)
        )

    @property
    def is_edm(self) -> bool:
        """A continuous EDM noise range (the pack's EDM teachers and students)."""
        return isinstance(self.model_sampling, comfy.model_sampling.ModelSamplingContinuousEDM)

    @property
    def sigma_range(self) -> tuple[float, float]:
        return float(self.model_sampling.sigma_min), float(self.model_sampling.sigma_max)

    def sigma_at(self, timestep: float) -> float:
        return float(self.model_sampling.sigma(torch.tensor(float(timestep))))

    def timestep_at(self, sigma: float) -> float:
        return float(self.model_sampling.timestep(torch.tensor(float(sigma))))


def schedule_of(model) -> Schedule:
    """The schedule of a ComfyUI MODEL (a ModelPatcher), patches included."""
    return Schedule(model.get_model_object("model_sampling"), isinstance(model.model, comfy.model_base.PixArt))


def student_info_of(model) -> StudentInfo | None:
    return model.model_options.get(STUDENT_INFO_KEY)


def resolve_preset(preset: str, model) -> tuple[str, float | None]:
    """Turn ``auto`` into a concrete preset (from the student file or its name, else the model type)."""
    if preset != "auto":
        return preset, None
    info = student_info_of(model)
    if info is not None and info.preset:
        if info.preset == "custom-timestep":
            return info.preset, info.timestep
        if info.preset == "custom-sigma":
            return info.preset, info.sigma
        return info.preset, None
    family = family_of(model)
    if model.patches:
        raise _auto_cannot_tell(model, family, "its weights are patched (a LoRA from ComfyUI's LoRA loader, or a "
                                               "merge), and the patch does not say which student it makes")
    schedule = schedule_of(model)
    if schedule.is_pixart:
        return "sim-pixart", None
    if schedule.is_ddpm:  # SD1.5 / SD2.x / SDXL: a SiD-LSG student, SD-Turbo or SDXL-Turbo, nothing tells which
        raise _auto_cannot_tell(model, family, "it came from a loader that does not pass on the file's name")
    if schedule.is_edm:
        return "edm", None
    raise PresetError(
        f"preset 'auto' cannot tell how to sample a {type(model.model).__name__} model "
        f"({type(schedule.model_sampling).__name__}); choose custom-sigma and give the student's noise level."
    )


def _auto_cannot_tell(model, family: str, why: str) -> PresetError:
    return PresetError(
        f"preset 'auto' cannot tell which student this {FAMILY_NAMES.get(family, family)} model "
        f"({type(model.model).__name__}) is: {why}. Choose the student's preset ({presets_for_family(family)}; README "
        "table), or load a UNet student with OneStep Load Student, which reads its file."
    )


def preset_from_file_name(name: str) -> str | None:
    """The few-step preset an official release's file name stands for (e.g. dmd2_sdxl_4step_unet_fp16), or None."""
    lowered = name.lower()
    return next((preset for pattern, preset in FILE_NAME_PRESETS if re.search(pattern, lowered)), None)


def steps_in_file_name(name: str) -> int | None:
    """The N of an 'Nstep' / 'N-steps' file name (SDXL-Lightning, Hyper-SD, DMD2 releases), or None."""
    match = re.search(r"(\d+)[_-]?steps?", name.lower())
    return int(match.group(1)) if match else None


def family_of(model) -> str:
    """'sdxl', 'sd2', 'sd15', or the ComfyUI model config's class name for any other family."""
    config = model.model.model_config
    if isinstance(model.model, comfy.model_base.SDXL):
        return "sdxl"
    if isinstance(config, comfy.supported_models.SD20):
        return "sd2"
    if isinstance(config, comfy.supported_models.SD15):
        return "sd15"
    return type(config).__name__


def presets_for_family(family: str) -> str:
    """The presets that fit a family, for error messages: the few-step ones, then the pack's own (or custom-sigma)."""
    found = [name for name, preset in FEW_STEP_PRESETS.items() if family in preset.families]
    found += ["sid-lsg"] if family in ("sd15", "sd2") else []
    return ", ".join(repr(name) for name in found) or "'custom-sigma' with the student's noise level"


def _family_error(node: str, name: str, preset: FewStepPreset, model, family: str) -> PresetError:
    wanted = " or ".join(FAMILY_NAMES[f] for f in preset.families)
    return PresetError(
        f"{node}: preset '{name}' is for {preset.student} ({wanted}); this model is "
        f"{FAMILY_NAMES.get(family, family)} ({type(model.model).__name__}). For this model use "
        f"{presets_for_family(family)}."
    )


def check_few_step(node: str, name: str, model, steps: int) -> FewStepPreset:
    """The few-step preset, once the model's family and schedule and the step count fit it; else a PresetError."""
    preset = FEW_STEP_PRESETS[name]
    family = family_of(model)
    if family not in preset.families:
        raise _family_error(node, name, preset, model, family)
    sampling = schedule_of(model).model_sampling
    if not schedule_of(model).is_ddpm or isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        raise PresetError(
            f"{node}: preset '{name}' needs the epsilon-prediction DDPM schedule of {preset.student}; this model "
            f"samples with {type(sampling).__name__}. Remove the ModelSampling node in front, or pick the preset "
            "of the model's own parametrisation."
        )
    if isinstance(sampling, comfy.model_sampling.X0) and not preset.x0:
        raise PresetError(
            f"{node}: this model is set to predict x0 (a ModelSamplingDiscrete 'x0' node?), but preset '{name}' "
            f"({preset.student}) is for an epsilon-prediction network. Remove that node, or use "
            "'sdxl-lightning-1step-x0' for SDXL-Lightning's x0 UNet."
        )
    if steps not in preset.steps:
        raise PresetError(f"{node}: preset '{name}' ({preset.student}) runs {_steps_text(preset.steps)}, not "
                          f"{steps}. {_steps_advice(name, preset, model)}")
    _check_x0_file(node, name, model)
    return preset


def _steps_text(steps: tuple[int, ...]) -> str:
    if len(steps) == 1:
        return f"exactly {steps[0]} step{'s' if steps[0] > 1 else ''}"
    if steps == tuple(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]} to {steps[-1]} steps"
    return "steps " + ", ".join(map(str, steps[:-1])) + f" or {steps[-1]}"


def _steps_advice(name: str, preset: FewStepPreset, model) -> str:
    info = student_info_of(model)
    if info is not None and info.steps in preset.steps:
        return f"This file is the {info.steps}-step release: set steps to {info.steps}."
    if name == "dmd2-sdxl-4step":
        return "Set steps to 4; for one step use the 1-step UNet with 'dmd2-sdxl-1step'."
    if name == "sdxl-lightning":
        return ("Set steps to the N of the file (sdxl_lightning_Nstep_*); its 1-step UNet is "
                "'sdxl-lightning-1step-x0'.")
    return f"Set steps to {preset.steps[0]}" + (" (the number in the LoRA's file name)." if len(preset.steps) > 1
                                                  else ".")


def _check_x0_file(node: str, name: str, model) -> None:
    """A file that says it is SDXL-Lightning's x0-prediction UNet, sampled with another preset, is refused."""
    info = student_info_of(model)
    x0_preset = "sdxl-lightning-1step-x0"
    if info is not None and info.preset == x0_preset and name != x0_preset:
        raise PresetError(
            f"{node}: this file is SDXL-Lightning's 1-step UNet, which predicts x0 (its name or metadata says so); "
            f"preset '{name}' would read its output as noise. Use '{x0_preset}' or 'auto'."
        )


def few_step_sigmas(preset: FewStepPreset, schedule: Schedule, steps: int) -> list[float]:
    """sigma(t) at the preset's timesteps, on the model's own schedule."""
    return [schedule.sigma_at(t) for t in preset.timesteps(steps)]


@dataclass(frozen=True)
class SamplingPlan:
    """How the OneStep sampler treats a resolved preset: its step rule, first input and parametrisation."""

    levels: Callable = renoise_levels
    start: str | None = None  # None: ComfyUI's own rule (sqrt(1 + sigma^2) z at the schedule's top, else sigma z)
    x0: bool = False


def sampling_plan(model, preset: str) -> SamplingPlan:
    """The plan for ``preset`` ('auto' resolved on ``model``, a ModelPatcher)."""
    name, _ = resolve_preset(preset, model)
    few_step = FEW_STEP_PRESETS.get(name)
    if few_step is None:
        return SamplingPlan()
    if few_step.rule == "tcd":
        return SamplingPlan(tcd_levels(schedule_of(model), few_step.gamma), few_step.start, few_step.x0)
    return SamplingPlan(RULE_LEVELS[few_step.rule], few_step.start, few_step.x0)


def tcd_levels(schedule: Schedule, gamma: float) -> Callable:
    """TCD's strategic stochastic step (Zheng et al. 2024, arXiv 2402.19159, eq. 9; diffusers TCDScheduler.step): go to
    s = floor((1 - gamma) t_next) along the prediction, then forward-diffuse to t_next. In the variance-exploding view:
    kept = sigma(s), fresh = sqrt(sigma_next^2 - sigma(s)^2)."""

    def levels(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = int((1 - gamma) * round(schedule.timestep_at(float(sigma_next))))
        kept = torch.as_tensor(schedule.sigma_at(s), dtype=sigma_next.dtype, device=sigma_next.device)
        return kept, (sigma_next**2 - kept**2).clamp(min=0).sqrt()

    return levels


def _check_sigma_in_range(node: str, schedule: Schedule, sigma: float, what: str) -> None:
    low, high = schedule.sigma_range
    if not low <= sigma <= high * (1 + 1e-6):
        raise PresetError(
            f"{node}: {what} gives sigma {sigma:.4g}, outside this model's range "
            f"[{low:.4g}, {high:.4g}]. Pick a value inside it, or the preset that matches the model."
        )


def _start_of(node: str, preset: str, schedule: Schedule, model, custom_value: float) -> tuple[float, float | None]:
    """The preset's first noise level, and its exact timestep where the preset is defined by one."""
    if preset == "sid-lsg":
        if not schedule.is_ddpm:
            raise PresetError(
                f"{node}: preset 'sid-lsg' needs a DDPM (epsilon or v) model such as SD1.5 or SD2.1-base; "
                f"this model uses {type(schedule.model_sampling).__name__}. Use 'edm' or 'custom-sigma'."
            )
        return schedule.sigma_at(TIMESTEP_INIT_SID_LSG), float(TIMESTEP_INIT_SID_LSG)
    if preset == "sim-pixart":
        if not schedule.is_pixart:
            raise PresetError(
                f"{node}: preset 'sim-pixart' is for SIM-DiT students on PixArt-alpha; this model is "
                f"{type(model.model).__name__}. Use 'sid-lsg' for SD1.5/2.1 students or 'edm' for EDM ones."
            )
        # SIM-DiT's input is 2.5 z at the discrete timestep nearest sigma 2.5 (ComfyUI rounds to it), not the
        # sigma of that timestep (2.50233)
        return SIGMA_INIT_EDM, schedule.timestep_at(SIGMA_INIT_EDM)
    if preset == "edm":
        return SIGMA_INIT_EDM, None
    if preset == "custom-sigma":
        if custom_value <= 0:
            raise PresetError(f"{node}: custom-sigma needs a positive sigma, got {custom_value}.")
        return float(custom_value), None
    if preset == "custom-timestep":
        if schedule.is_ddpm and not 0 <= custom_value <= schedule.model_sampling.num_timesteps - 1:
            raise PresetError(
                f"{node}: timestep {custom_value:g} is outside 0..{schedule.model_sampling.num_timesteps - 1}."
            )
        return schedule.sigma_at(custom_value), float(custom_value)
    raise PresetError(f"{node}: unknown preset '{preset}'; choose one of {', '.join(PRESETS)}.")


def first_sigma(node: str, model, preset: str = "auto") -> float:
    """The preset's first noise level, whatever step counts it allows (for callers that need only where sampling
    starts, e.g. PuLID's step window)."""
    name, _ = resolve_preset(preset, model)
    steps = min(FEW_STEP_PRESETS[name].steps) if name in FEW_STEP_PRESETS else 1
    return float(preset_sigmas(node, model, preset, steps)[0])


def x0_model(model):
    """A clone of ``model`` whose outputs are read as x0 (diffusers prediction_type "sample"), as the stock
    ModelSamplingDiscrete node's 'x0' option does; the model itself is left as it was."""
    if isinstance(schedule_of(model).model_sampling, comfy.model_sampling.X0):
        return model

    class ModelSamplingX0(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.X0):
        pass

    patched = model.clone()
    patched.add_object_patch("model_sampling", ModelSamplingX0(model.model.model_config))
    return patched


def preset_sigmas(node: str, model, preset: str, steps: int, custom_value: float = 0.0) -> torch.Tensor:
    """Noise levels [sigma_0, ..., sigma_{k-1}, 0] for a one-step or k-step student.

    k-step re-noising follows SiD-LSG: integer timesteps int(t_0 * (1 - i/k)) on a DDPM schedule; on a
    continuous schedule the rule applies to sigma itself.
    """
    if steps < 1:
        raise PresetError(f"{node}: steps must be at least 1, got {steps}.")
    schedule = schedule_of(model)
    preset, stored_value = resolve_preset(preset, model)
    if preset in FEW_STEP_PRESETS:
        return torch.tensor(few_step_sigmas(check_few_step(node, preset, model, steps), schedule, steps) + [0.0])
    _check_x0_file(node, preset, model)
    if stored_value is not None:
        custom_value = stored_value
    start_sigma, start_timestep = _start_of(node, preset, schedule, model, custom_value)
    _check_sigma_in_range(node, schedule, start_sigma, f"preset '{preset}'")
    if schedule.is_ddpm:
        if start_timestep is None:
            start_timestep = schedule.timestep_at(start_sigma)
        sigmas = [schedule.sigma_at(t) for t in multistep_timesteps(start_timestep, steps)]
        sigmas[0] = start_sigma
    else:
        sigmas = multistep_levels(start_sigma, steps)
    return torch.tensor(sigmas + [0.0])
