"""One-step sampling nodes: a SAMPLER and SIGMAS for the stock custom samplers, and a one-node generator."""

import math

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..distill.one_step import sample_one_step
from .pack_models import RawEDMNetwork, check_pixel_shape
from .presets import PRESET_TOOLTIP, PRESETS, PresetError, preset_sigmas, sampling_plan, x0_model

CATEGORY = "OneStep/sampling"
MAX_STEPS = 8
MAX_BATCH, MAX_SIDE, MAX_SEED = 4096, 16384, 0xFFFFFFFFFFFFFFFF


class OneStepInputError(ValueError):
    """Bad input to a OneStep node; the message names the node, the value and the fix."""


def check_generation_memory(node: str, model, shape: list[int]) -> None:
    """Refuse, before the latent is allocated, a batch x size whose estimate exceeds the device's memory: ComfyUI's
    own estimate of the network's forward pass (``memory_required``, what its samplers reserve) plus the latent,
    the noise and the result."""
    device = model.load_device
    tensors = 3 * 4 * math.prod(shape)  # float32 latent, noise and samples
    needed = int(model.model.memory_required(shape)) + tensors
    limit = comfy.model_management.get_total_memory(device)
    if needed > limit:
        raise OneStepInputError(
            f"{node}: a batch of {shape[0]} latents of {shape[3]}x{shape[2]} needs about {needed / 2**30:.1f} GiB but "
            f"{device} has {limit / 2**30:.1f} GiB; lower batch_size, width or height.")


def latent_channels_of(base_model) -> int:
    return base_model.latent_format.latent_channels


def one_step_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, preset="auto"):
    """KSAMPLER entry point: check the latent, then run the pure one-step sampler with the model's own re-noising
    and the step rule of ``preset`` ('auto': resolved on the model being sampled)."""
    base_model = model.inner_model.inner_model
    expected = latent_channels_of(base_model)
    if x.ndim >= 2 and x.shape[1] != expected:
        raise OneStepInputError(
            f"OneStep Sampler: the latent has {x.shape[1]} channels but this {type(base_model).__name__} model "
            f"expects {expected}. Feed it a latent made for this model (an Empty Latent Image of the model's "
            f"family, or a VAE Encode with the matching VAE)."
        )
    plan = sampling_plan(model.inner_model.model_patcher, preset)
    if plan.x0 and not isinstance(base_model.model_sampling, comfy.model_sampling.X0):
        raise PresetError(
            "OneStep Sampler: SDXL-Lightning's 1-step UNet predicts x0, but this model is sampled as epsilon. Put a "
            "ModelSamplingDiscrete node (sampling 'x0') in front of SamplerCustom, or use OneStep Generate, which "
            "does it itself."
        )
    return sample_one_step(
        model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
        renoise=base_model.model_sampling.noise_scaling, levels=plan.levels,
    )


class OneStepKSampler(comfy.samplers.KSAMPLER):
    """ComfyUI's KSAMPLER with the preset's own first input: unit noise at the first timestep for students sampled
    with diffusers' LCM / TCD / DDIM schedulers, sigma * noise for its Euler schedulers with trailing spacing."""

    def __init__(self, preset: str = "auto"):
        super().__init__(one_step_sampler_function, extra_options={"preset": preset})

    def max_denoise(self, model_wrap, sigmas) -> bool:
        """True scales the noise by sqrt(1 + sigma^2) (a unit-variance input), False by sigma (noise_scaling)."""
        start = sampling_plan(model_wrap.model_patcher, self.extra_options["preset"]).start
        if start is None:
            return super().max_denoise(model_wrap, sigmas)
        return start == "unit"


def steps_input() -> io.Int.Input:
    return io.Int.Input(
        "steps", default=1, min=1, max=MAX_STEPS,
        tooltip="1 for one-step generation. k > 1: SiD-LSG re-noises the student's output with fresh noise at "
                "t_init * (1 - i/k) and runs it again; the few-step presets take their own timesteps and rule, and "
                "some only the step counts they were trained for (a 4-step DMD2 model: 4).",
    )


def preset_inputs() -> list:
    return [
        io.Combo.Input("preset", options=PRESETS, default="auto", tooltip=PRESET_TOOLTIP),
        steps_input(),
        io.Float.Input(
            "custom_value", default=2.5, min=0.0, max=10000.0, step=0.0001, round=False,
            tooltip="The sigma (custom-sigma) or timestep (custom-timestep) to start from; ignored by the "
                    "other presets.",
        ),
    ]


class OneStepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepSampler",
            display_name="OneStep Sampler",
            category=CATEGORY,
            description="Sampler for one-step and few-step students (SiD / SiD-LSG / SIM, DMD2, Turbo, Hyper-SD, "
                        "SDXL-Lightning, TCD): the student's x0 at each noise level of the SIGMAS, moved to the next "
                        "level by the preset's own rule. Use with SamplerCustom at cfg 1 and OneStep Sigmas of the "
                        "same preset.",
            inputs=[io.Combo.Input("preset", options=PRESETS, default="auto", optional=True,
                                   tooltip="The preset of the OneStep Sigmas it is used with: it sets the step rule "
                                           "and the first input (optional: graphs from before it existed mean "
                                           "'auto'). " + PRESET_TOOLTIP)],
            outputs=[io.Sampler.Output(display_name="sampler",
                                       tooltip="Connect to SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, preset="auto") -> io.NodeOutput:
        return io.NodeOutput(OneStepKSampler(preset))


class OneStepSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepSigmas",
            display_name="OneStep Sigmas",
            category=CATEGORY,
            description="Noise levels for a one-step (or k-step) student, from a preset resolved on the model's "
                        "schedule.",
            inputs=[io.Model.Input("model", tooltip="The student; its schedule turns timesteps into sigmas.")]
            + preset_inputs(),
            outputs=[io.Sigmas.Output(display_name="sigmas",
                                      tooltip="[sigma_0, ..., 0]: connect to SamplerCustom's sigmas.")],
        )

    @classmethod
    def execute(cls, model, preset, steps, custom_value) -> io.NodeOutput:
        return io.NodeOutput(preset_sigmas("OneStep Sigmas", model, preset, steps, custom_value))


class OneStepGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepGenerate",
            display_name="OneStep Generate",
            category=CATEGORY,
            description="Generate latents from a one-step student in one node: noise, one network evaluation "
                        "(or k), no classifier-free guidance (it is distilled into the student).",
            inputs=[
                io.Model.Input("model", tooltip="A one-step student, e.g. from OneStep Load Student."),
                io.Conditioning.Input("positive", tooltip="The prompt, encoded with the student's text encoder."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the initial noise (and of the re-noising for k > 1)."),
                io.Int.Input("batch_size", default=1, min=1, max=MAX_BATCH, tooltip="Images per run."),
                io.Int.Input("width", default=512, min=16, max=MAX_SIDE, step=4,
                             tooltip="Image width in pixels (a multiple of 8 for latent-space models)."),
                io.Int.Input("height", default=512, min=16, max=MAX_SIDE, step=4,
                             tooltip="Image height in pixels (a multiple of 8 for latent-space models)."),
            ]
            + preset_inputs(),
            outputs=[io.Latent.Output(display_name="latent", tooltip="Decode with the student's VAE.")],
        )

    @classmethod
    def validate_inputs(cls, batch_size=1, width=512, height=512) -> bool | str:
        """The ranges of these three (ComfyUI skips its own min/max check for inputs a validate function names; it
        still checks the others, the seed included, because this function takes no **kwargs)."""
        if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
            return f"OneStep Generate: batch_size must be 1 to {MAX_BATCH}, got {batch_size}."
        for name, value in (("width", width), ("height", height)):
            if value is not None and not 16 <= value <= MAX_SIDE:
                return f"OneStep Generate: {name} must be 16 to {MAX_SIDE} pixels, got {value}."
        return True

    @classmethod
    def execute(cls, model, positive, seed, batch_size, width, height, preset, steps, custom_value) -> io.NodeOutput:
        message = cls.validate_inputs(batch_size=batch_size, width=width, height=height)
        if message is not True:
            raise OneStepInputError(message)
        if not 0 <= seed <= MAX_SEED:
            raise OneStepInputError(f"OneStep Generate: seed {seed} is out of range; use 0 to {MAX_SEED}.")
        sigmas = preset_sigmas("OneStep Generate", model, preset, steps, custom_value)
        if sampling_plan(model, preset).x0:
            model = x0_model(model)
        latent_format = model.get_model_object("latent_format")
        downscale = getattr(latent_format, "spacial_downscale_ratio", 8)
        if width % downscale or height % downscale:
            raise OneStepInputError(
                f"OneStep Generate: {width}x{height} is not a multiple of {downscale}, this model's latent "
                f"downscale; use e.g. {width // downscale * downscale}x{height // downscale * downscale}."
            )
        shape = [batch_size, latent_format.latent_channels, height // downscale, width // downscale]
        check_generation_memory("OneStep Generate", model, shape)
        if isinstance(model.model.diffusion_model, RawEDMNetwork):
            check_pixel_shape("OneStep Generate", model.model.diffusion_model.denoiser, tuple(shape))
        latent = torch.zeros(
            shape,
            device=comfy.model_management.intermediate_device(),
        )
        noise = comfy.sample.prepare_noise(latent, seed)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        samples = comfy.sample.sample_custom(
            model, noise, 1.0, OneStepKSampler(preset), sigmas, positive, [],
            latent, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        return io.NodeOutput({"samples": samples})
