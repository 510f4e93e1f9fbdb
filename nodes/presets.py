"""Noise levels of the one-step presets, resolved against a ComfyUI MODEL's own schedule."""

from dataclasses import dataclass

import comfy.model_base
import comfy.model_sampling
import torch

from ..distill.one_step import SIGMA_INIT_EDM, TIMESTEP_INIT_SID_LSG, multistep_levels, multistep_timesteps
from ..distill.student_file import StudentInfo

PRESETS = ["auto", "sid-lsg", "edm", "sim-pixart", "custom-sigma", "custom-timestep"]
PRESET_TOOLTIP = (
    "auto: the preset stored in the student file, else chosen from the model type. "
    "sid-lsg: SD1.5 / SD2.1-base students, timestep 625 (sigma 2.5017). "
    "edm: EDM-style SiD students, sigma 2.5. "
    "sim-pixart: SIM-DiT (PixArt-alpha), the discrete timestep nearest sigma 2.5. "
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
    """Turn ``auto`` into a concrete preset (from the student file, else the model type)."""
    if preset != "auto":
        return preset, None
    info = student_info_of(model)
    if info is not None and info.preset:
        if info.preset == "custom-timestep":
            return info.preset, info.timestep
        if info.preset == "custom-sigma":
            return info.preset, info.sigma
        return info.preset, None
    schedule = schedule_of(model)
    if schedule.is_pixart:
        return "sim-pixart", None
    if schedule.is_ddpm:
        return "sid-lsg", None
    if schedule.is_edm:
        return "edm", None
    raise PresetError(
        f"preset 'auto' cannot tell how to sample a {type(model.model).__name__} model "
        f"({type(schedule.model_sampling).__name__}); choose custom-sigma and give the student's noise level."
    )


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


def preset_sigmas(node: str, model, preset: str, steps: int, custom_value: float = 0.0) -> torch.Tensor:
    """Noise levels [sigma_0, ..., sigma_{k-1}, 0] for a one-step or k-step student.

    k-step re-noising follows SiD-LSG: integer timesteps int(t_0 * (1 - i/k)) on a DDPM schedule; on a
    continuous schedule the rule applies to sigma itself.
    """
    if steps < 1:
        raise PresetError(f"{node}: steps must be at least 1, got {steps}.")
    schedule = schedule_of(model)
    preset, stored_value = resolve_preset(preset, model)
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
