"""OneStep Fast Path: the student's network call (and the VAE decode) compiled and replayed as CUDA graphs."""

import logging

import comfy.model_management
import torch
from comfy_api.latest import io

from ..fastpath.cache import STRATEGIES, FastCallCache, fallback_reason
from ..fastpath.fingerprint import options_fingerprint, parameters_fingerprint

logger = logging.getLogger("onestep.fastpath")
TENSOR_CONDITIONS = ("c_crossattn", "c_concat", "y")
STRATEGY_TOOLTIP = (
    "auto: compile and replay as a CUDA graph on a CUDA device, else run eager (said once in the log). "
    "static-eager: the graph's buffer protocol without a graph (checks on the CPU). eager: off."
)


def make_cache(strategy: str, compile_function: bool) -> FastCallCache:
    return FastCallCache(strategy, compile_function, notify=logger.warning,
                         propagate=(comfy.model_management.InterruptProcessingException,))


class FastApplyModel:
    """A ``model_function_wrapper`` that routes each network call through a FastCallCache.

    Clones of the patched MODEL share this object (``__deepcopy__`` returns it), so their calls share the
    cache; the key tells them apart by model, weights and patches.
    """

    def __init__(self, cache: FastCallCache, previous_wrapper=None):
        self.cache = cache
        self.previous_wrapper = previous_wrapper

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, timestep, conditions = args["input"], args["timestep"], args["c"]
        if self.previous_wrapper is not None:
            self.cache.report_once("OneStep fast path: running eager because another node already wraps this "
                                    "model's network call.")
            return self.previous_wrapper(apply_model, args)
        uncapturable = sorted(set(conditions) - set(TENSOR_CONDITIONS) - {"transformer_options"})
        reason = fallback_reason(self.cache.strategy, x.device, self.cache.compile_function)
        if uncapturable and reason is None:
            reason = f"the model call carries {', '.join(uncapturable)}, which a graph cannot capture"
        if reason is not None:  # decided before fingerprinting anything: the eager path costs nothing extra
            return self.cache.eager(lambda: apply_model(x, timestep, **conditions), [], reason)
        names = [name for name in TENSOR_CONDITIONS if name in conditions]
        transformer_options = conditions.get("transformer_options", {})
        base_model = apply_model.__self__

        def network_call(x_in, t_in, *tensors):
            return apply_model(x_in, t_in, transformer_options=transformer_options, **dict(zip(names, tensors)))

        key = (
            id(base_model),
            getattr(base_model, "current_weight_patches_uuid", None),
            parameters_fingerprint(base_model),
            tuple(names),
            options_fingerprint(transformer_options),
        )
        inputs = [x, timestep] + [conditions[name] for name in names]
        return self.cache.call(key, network_call, inputs, x.device)


class OneStepFastPath(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepFastPath",
            display_name="OneStep Fast Path",
            category="OneStep/sampling",
            description="Compile the student's network call and replay it as a CUDA graph, cached per shape, "
                        "weights and patches. Outputs equal the eager path; the first call per shape compiles.",
            inputs=[
                io.Model.Input("model", tooltip="The one-step student (after any PuLID or LoRA nodes)."),
                io.Combo.Input("strategy", options=list(STRATEGIES), default="auto", tooltip=STRATEGY_TOOLTIP),
                io.Boolean.Input("compile", default=True,
                                 tooltip="torch.compile the call before capture (slower first call, faster replays)."),
            ],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="The same model; its network calls take the fast path.")],
        )

    @classmethod
    def execute(cls, model, strategy, compile) -> io.NodeOutput:
        patched = model.clone()
        previous = patched.model_options.get("model_function_wrapper")
        patched.set_model_unet_function_wrapper(FastApplyModel(make_cache(strategy, compile), previous))
        return io.NodeOutput(patched)


class FastDecoder:
    """VAE decoding through a FastCallCache; the VAE object keeps one per strategy."""

    def __init__(self, cache: FastCallCache):
        self.cache = cache

    def decode(self, vae, latent: torch.Tensor) -> torch.Tensor:
        comfy.model_management.load_models_gpu([vae.patcher])
        decoder = vae.first_stage_model
        samples = latent.to(device=vae.device, dtype=vae.vae_dtype)
        key = (id(decoder), parameters_fingerprint(decoder))
        decoded = self.cache.call(key, decoder.decode, [samples], samples.device)
        return vae.process_output(decoded.to(vae.output_device).float()).movedim(1, -1)


class OneStepFastDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepFastDecode",
            display_name="OneStep Fast VAE Decode",
            category="OneStep/sampling",
            description="VAE decode compiled and replayed as a CUDA graph (cached per latent shape); "
                        "eager elsewhere. No tiling: use the stock VAE Decode for images that do not fit.",
            inputs=[
                io.Latent.Input("samples", tooltip="Latents from OneStep Generate or a sampler."),
                io.Vae.Input("vae", tooltip="The VAE that matches the model."),
                io.Combo.Input("strategy", options=list(STRATEGIES), default="auto", tooltip=STRATEGY_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="Decoded images.")],
        )

    @classmethod
    def execute(cls, samples, vae, strategy) -> io.NodeOutput:
        decoders = vae.__dict__.setdefault("_onestep_fast_decoders", {})
        if strategy not in decoders:
            decoders[strategy] = FastDecoder(make_cache(strategy, compile_function=True))
        return io.NodeOutput(decoders[strategy].decode(vae, samples["samples"]))
