"""Apply PuLID (SDXL-family UNets, one-step students included) and Apply PuLID FLUX, as patches on a clone.

SDXL: an ``attn2`` replacement on each of the 70 text cross-attentions computes the text attention (or
calls the replacement that was there before) and adds each face's ID attention (pulid/injection.py).
FLUX: ``patches_replace["dit"]`` double/single block replacements run the block, then add
``w * CA(id, img)`` to the image tokens. The original MODEL is never touched: removing the node restores
it bit for bit. Patch objects are immutable and shared between clones (``__deepcopy__`` returns them).

Start/end are fractions of the sampling schedule. On a one-step or k-step student (a MODEL that carries
the pack's student metadata) they are fractions of the student's own steps: step i of k sits at i/k, so the
single step of a one-step student is at 0, and PuLID acts on it when start is 0 and end is above 0.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.model_patcher
import torch
from comfy_api.latest import io

from ..pulid.injection import (
    PRESETS,
    add_contributions,
    append_zero_tokens,
    batch_for_chunks,
    flux_contribution,
    flux_injection_indices,
    id_contribution,
    mask_to_tokens,
    sdxl_token_grid,
)
from ..pulid.weights import SDXL_CROSS_ATTENTION_SLOTS, PulidWeightsError, expect_base
from .presets import first_sigma, schedule_of, student_info_of
from .pulid_embed import PULID_EMBEDDING, PulidEmbedding
from .pulid_loaders import PULID, PulidModel
from .safety import GALLERY

NODE = "Apply PuLID"
FLUX_NODE = "Apply PuLID FLUX"
V1_1_WEIGHT = PRESETS["v1.1"].default_weight  # the official v1.1 app's ID scale, offered in the texts only
PRESET_NAMES = ("fidelity", "style", "neutral", "v1.1", "custom")
TXT_LEN_KEY = "onestep_pulid_txt_tokens"  # per-call transformer_options entry: FLUX text tokens before the image
MASK_ASPECT_TOLERANCE = 0.02


class PulidApplyError(ValueError):
    """A PuLID input that does not fit the model; the message names the node and the fix."""


@dataclass(frozen=True)
class StepWindow:
    """Noise levels at which a face is injected: sigma_end < sigma <= sigma_start."""

    sigma_start: float
    sigma_end: float

    def active(self, sigmas: torch.Tensor) -> bool:
        sigma = float(sigmas.max())
        return self.sigma_end < sigma <= self.sigma_start * (1 + 1e-5)


def student_sigma_at(model, fraction: float, node: str) -> float:
    """The noise level a fraction of a student's own schedule (its first sigma down to 0) stands for."""
    if fraction >= 1:
        return 0.0
    sigma_init = first_sigma(node, model)
    if fraction <= 0:
        return sigma_init
    schedule = schedule_of(model)
    if schedule.is_ddpm:
        return schedule.sigma_at(schedule.timestep_at(sigma_init) * (1 - fraction))
    return sigma_init * (1 - fraction)


def step_window(model, start: float, end: float, node: str) -> StepWindow:
    """Start/end fractions as noise levels: ComfyUI's percent-of-schedule, or a student's own steps."""
    if start >= end:
        raise PulidApplyError(f"{node}: start ({start}) must be below end ({end}); 0 and 1 inject at every step.")
    if student_info_of(model) is not None:
        return StepWindow(student_sigma_at(model, start, node), student_sigma_at(model, end, node))
    model_sampling = model.get_model_object("model_sampling")
    return StepWindow(float(model_sampling.percent_to_sigma(start)), float(model_sampling.percent_to_sigma(end)))


def check_mask(mask: torch.Tensor | None, node: str) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = mask[None] if mask.ndim == 2 else mask
    if mask.ndim != 3 or min(mask.shape[-2:]) < 1:
        raise PulidApplyError(f"{node}: attn_mask must be a MASK [H, W] or [batch, H, W], got {list(mask.shape)}.")
    return mask.float().cpu()


def mask_tokens(mask: torch.Tensor, grid: tuple[int, int], latent_hw: tuple[int, int], node: str) -> torch.Tensor:
    """Per-token weights [M, rows*cols, 1] of a mask that has the image's aspect ratio."""
    mask_aspect, image_aspect = mask.shape[-1] / mask.shape[-2], latent_hw[1] / latent_hw[0]
    if abs(mask_aspect / image_aspect - 1) > MASK_ASPECT_TOLERANCE:
        raise PulidApplyError(
            f"{node}: attn_mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
            f"{latent_hw[1] * 8}x{latent_hw[0] * 8} (latent {latent_hw[1]}x{latent_hw[0]}): give a mask of the "
            "image's size (or at least its aspect ratio)."
        )
    return mask_to_tokens(mask, grid)


def per_sample(cond: torch.Tensor, uncond: torch.Tensor, options: dict, batch: int, node: str) -> torch.Tensor:
    """``cond`` for the conditional chunks of the batch and ``uncond`` for the unconditional ones."""
    try:
        return batch_for_chunks(cond, uncond, options.get("cond_or_uncond", [0]), batch)
    except ValueError as error:
        raise PulidApplyError(f"{node}: attn_mask batch does not fit the image batch: {error}.") from error


class DeviceCache:
    """Tensors made once per (name, device, dtype), moved to that device and dtype, and reused at every step."""

    def __init__(self):
        self.entries = {}

    def get(self, name, like: torch.Tensor, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (name, like.device, like.dtype)
        if key not in self.entries:
            self.entries[key] = make().to(like.device, like.dtype)
        return self.entries[key]


@dataclass(frozen=True, eq=False)
class SdxlFace:
    """One face on the SDXL cross-attentions: ID keys/values per slot (ID tokens + zero tokens, projected)."""

    keys: dict  # slot -> (cond [1, T, hidden], uncond [1, T, hidden])
    values: dict
    projection: str
    weight: float
    window: StepWindow
    mask: torch.Tensor | None
    cache: DeviceCache = field(default_factory=DeviceCache)

    def id_keys_values(self, slot: int, q: torch.Tensor, options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        k_cond, k_uncond = (self.cache.get((slot, "k", i), q, lambda t=t: t) for i, t in enumerate(self.keys[slot]))
        v_cond, v_uncond = (self.cache.get((slot, "v", i), q, lambda t=t: t) for i, t in enumerate(self.values[slot]))
        batch = q.shape[0]
        return per_sample(k_cond, k_uncond, options, batch, NODE), per_sample(v_cond, v_uncond, options, batch, NODE)

    def token_mask(self, q: torch.Tensor, options: dict) -> torch.Tensor | None:
        if self.mask is None:
            return None
        latent_hw = tuple(options["original_shape"][-2:])
        grid = sdxl_token_grid(latent_hw, q.shape[1])
        tokens = self.cache.get(("mask", grid), q, lambda: mask_tokens(self.mask, grid, latent_hw, NODE))
        return per_sample(tokens, tokens, options, q.shape[0], NODE)


def text_attention(q, k, v, extra_options: dict) -> torch.Tensor:
    """The layer's own text attention as ComfyUI's ``CrossAttention.forward`` calls it, with the layer's
    transformer_options, so that an ``optimized_attention_override`` set by another node still applies. An attn2
    replacement gets every transformer_options entry except the patch dicts in ``extra_options``."""
    return comfy.ldm.modules.attention.optimized_attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options)


class PulidAttention:
    """The ``attn2`` replacement of one SDXL cross-attention slot: text attention plus every face's ID term."""

    def __init__(self, slot: int, faces: tuple, previous=None):
        self.slot, self.faces, self.previous = slot, faces, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        text = self.previous if self.previous is not None else text_attention
        h = text(q, k, v, extra_options)
        faces = [face for face in self.faces if face.window.active(extra_options["sigmas"])]
        if not faces:
            return h
        contributions, masks = [], []
        for face in faces:
            k_id, v_id = face.id_keys_values(self.slot, q, extra_options)
            contributions.append(id_contribution(h, q, k_id, v_id, heads, face.projection, face.weight))
            masks.append(face.token_mask(q, extra_options))
        return add_contributions(h, contributions, masks)


def attn2_of(diffusion_model, block: str, block_id: int, index: int):
    """The cross-attention of ComfyUI's attn2 patch slot (block, block id, transformer index), or None."""
    blocks = {"input": "input_blocks", "output": "output_blocks", "middle": "middle_block"}
    try:
        container = getattr(diffusion_model, blocks[block])
        layers = container if block == "middle" else container[block_id]
        transformer = next(m for m in layers if isinstance(m, comfy.ldm.modules.attention.SpatialTransformer))
        return transformer.transformer_blocks[index].attn2
    except (AttributeError, IndexError, StopIteration, TypeError):
        return None


def check_sdxl_model(model, pulid: PulidModel) -> None:
    """Every slot PuLID patches exists with the hidden size of its ID projections."""
    diffusion_model = model.model.diffusion_model
    for slot, (block, block_id, index, _) in enumerate(SDXL_CROSS_ATTENTION_SLOTS):
        attention = attn2_of(diffusion_model, block, block_id, index)
        expected = pulid.module.projection(slot).id_to_k.out_features
        if attention is None or attention.to_q.out_features != expected:
            found = "missing" if attention is None else f"{attention.to_q.out_features} wide"
            raise PulidApplyError(
                f"{NODE}: {pulid.name} is PuLID for SDXL, but this {type(model.model).__name__} model's "
                f"cross-attention {block} {block_id}.{index} is {found} (the file's ID projections there: "
                f"{expected}; SDXL's: {SDXL_CROSS_ATTENTION_SLOTS[slot][3]}). Use an SDXL-family model (SDXL, an "
                "SDXL one-step student), or Apply PuLID FLUX with FLUX weights for FLUX."
            )


def check_inputs(pulid: PulidModel, embedding: PulidEmbedding, gallery, base: str, node: str) -> None:
    """PuLID weights for ``base``, an embedding made with the same weights, and no protected identity."""
    other_node = {"sdxl": FLUX_NODE, "flux": NODE}[base]
    try:
        expect_base(pulid.layout, base)
    except PulidWeightsError as error:
        raise PulidApplyError(f"{node}: {error} (for {pulid.layout.base.upper()} use {other_node})") from error
    if embedding.base != pulid.layout.base:
        raise PulidApplyError(
            f"{node}: the embedding was made with PuLID {embedding.base.upper()} weights but {pulid.name} is for "
            f"{pulid.layout.base.upper()}: embed the face with the same PuLID model you apply."
        )
    refuse_protected_identities(embedding, gallery, node)


def projected(tokens: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """ID tokens through a bias-free ID projection, in fp32 on the CPU (done once per Apply)."""
    with torch.inference_mode():
        return torch.nn.functional.linear(tokens.float().cpu(), linear.weight.float().cpu())


def sdxl_face(pulid: PulidModel, embedding: PulidEmbedding, projection: str, num_zero: int, weight: float,
              window: StepWindow, mask: torch.Tensor | None) -> SdxlFace:
    tokens = [append_zero_tokens(t, num_zero) for t in (embedding.cond, embedding.uncond)]
    keys, values = {}, {}
    for slot in range(len(SDXL_CROSS_ATTENTION_SLOTS)):
        layer = pulid.module.projection(slot)
        keys[slot] = tuple(projected(t, layer.id_to_k) for t in tokens)
        values[slot] = tuple(projected(t, layer.id_to_v) for t in tokens)
    return SdxlFace(keys, values, projection, weight, window, mask)


def with_face(patches: dict, key, face, make):
    """The patch for ``key`` with ``face`` added: ours extended, a foreign one wrapped, or a new one."""
    existing = patches.get(key)
    if isinstance(existing, (PulidAttention, PulidFluxBlock)):
        return make(existing.faces + (face,), existing.previous)
    return make((face,), existing)


def apply_sdxl(model, face: SdxlFace):
    """A clone of ``model`` with ``face`` on every SDXL cross-attention slot."""
    patched = model.clone()
    replaced = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for slot, (block, block_id, index, _) in enumerate(SDXL_CROSS_ATTENTION_SLOTS):
        key = (block, block_id, index)
        patch = with_face(replaced, key, face, lambda faces, previous, s=slot: PulidAttention(s, faces, previous))
        patched.set_model_attn2_replace(patch, block, block_id, index)
    return patched


def common_inputs():
    return [
        io.Model.Input("model", tooltip="The model to add the identity to; the original stays untouched."),
        PULID.Input("pulid", tooltip="From PuLID Load Model (the same file the embedding was made with)."),
        PULID_EMBEDDING.Input("embedding", tooltip="From PuLID Embed Face."),
        io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                       tooltip="Strength of the identity (the official id_scale): 0.8-1.0 typical; the official v1 and "
                               f"v1.1 apps' default is {V1_1_WEIGHT:g}. Every preset uses this value."),
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the schedule where injection starts (0 = first step). On a one-step "
                               "student its single step is at 0: keep 0."),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the schedule where injection stops (1 = last step). Must be above "
                               "start_at."),
        io.Mask.Input("attn_mask", optional=True,
                      tooltip="Where this face goes (image-sized MASK, 1 = here). Chain one Apply per person, each "
                              "with its own mask, for several people. A batch of masks gives one per image."),
        GALLERY.Input("protected_identities", optional=True,
                      tooltip="Opt-in guard: from OneStep Protected Identities (built with the same face model as "
                              "the embedding, antelopev2). A reference face that matches one of them is refused."),
    ]


def refuse_protected_identities(embedding: PulidEmbedding, gallery, node: str) -> None:
    """Stop when any reference face of the embedding matches the protected gallery."""
    from ..safety.errors import ProtectedIdentityError, SafetyInputError
    from ..safety.identity import refuse_protected_identity

    if gallery is None:
        return
    for vector in embedding.recognition:
        try:
            refuse_protected_identity(vector, gallery, face_model=embedding.analyzer_name)
        except (ProtectedIdentityError, SafetyInputError) as error:
            raise type(error)(f"{node}: {error}") from None


class ApplyPuLID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepApplyPuLID",
            display_name="Apply PuLID",
            category="OneStep/PuLID",
            description="Insert a face's identity into an SDXL-family model (SDXL, SDXL one-step students) through "
                        "its cross-attentions, with PuLID v1 / v1.1 weights. Presets: fidelity (ortho_v2, 8 zero "
                        "tokens), style (ortho, 16), neutral (no projection), v1.1 (ortho_v2, 20; the official "
                        f"default weight is {V1_1_WEIGHT:g}), or custom (projection and zero tokens below).",
            inputs=[
                *common_inputs(),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="fidelity",
                               tooltip="fidelity: closest likeness. style: more freedom for the prompt's style. "
                                       "neutral: plain addition. v1.1: the v1.1 app's ortho_v2 with 20 zero "
                                       f"tokens (its default weight is {V1_1_WEIGHT:g}; the weight input is used as "
                                       "set). custom: the two inputs below."),
                io.Combo.Input("projection", options=["none", "ortho", "ortho_v2"], default="ortho_v2",
                               tooltip="custom preset only: how the ID attention is combined with the text "
                                       "attention (ortho removes the part parallel to it; ortho_v2 weighs that by "
                                       "how much each position attends to the face)."),
                io.Int.Input("num_zero_tokens", default=8, min=0, max=64,
                             tooltip="custom preset only: zero tokens appended to the ID tokens as attention "
                                     "sinks; more = weaker, less intrusive identity."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A patched clone of the model.")],
        )

    @classmethod
    def execute(cls, model, pulid: PulidModel, embedding: PulidEmbedding, weight, start_at, end_at, preset,
                projection, num_zero_tokens, attn_mask=None, protected_identities=None) -> io.NodeOutput:
        check_inputs(pulid, embedding, protected_identities, "sdxl", NODE)
        check_sdxl_model(model, pulid)
        if preset != "custom":
            chosen = PRESETS[preset]
            projection, num_zero_tokens = chosen.projection, chosen.num_zero
        window = step_window(model, start_at, end_at, NODE)
        face = sdxl_face(pulid, embedding, projection, num_zero_tokens, weight, window, check_mask(attn_mask, NODE))
        return io.NodeOutput(apply_sdxl(model, face))


@dataclass(frozen=True, eq=False)
class FluxFace:
    """One face on FLUX: its ID tokens, the perceiver cross-attentions, weight, window and mask."""

    cond: torch.Tensor
    uncond: torch.Tensor
    cross_attentions: torch.nn.ModuleList
    weight: float
    window: StepWindow
    mask: torch.Tensor | None
    cache: DeviceCache = field(default_factory=DeviceCache)

    def contribution(self, ca_index: int, img: torch.Tensor, options: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        cross_attention = self.cross_attentions[ca_index]
        parameter = next(cross_attention.parameters())
        cond, uncond = (self.cache.get(name, parameter, lambda t=t: t) for name, t in (("cond", self.cond),
                                                                                        ("uncond", self.uncond)))
        tokens = per_sample(cond, uncond, options, img.shape[0], FLUX_NODE)
        delta = flux_contribution(cross_attention, tokens, img.to(parameter.dtype), self.weight).to(img.dtype)
        return delta, self.token_mask(img, options)

    def token_mask(self, img: torch.Tensor, options: dict) -> torch.Tensor | None:
        if self.mask is None:
            return None
        grid = flux_grid(img.shape[1], self.mask.shape[-2:])
        latent_hw = (2 * grid[0], 2 * grid[1])
        tokens = self.cache.get(("mask", grid), img, lambda: mask_tokens(self.mask, grid, latent_hw, FLUX_NODE))
        return per_sample(tokens, tokens, options, img.shape[0], FLUX_NODE)


def flux_grid(image_tokens: int, mask_hw) -> tuple[int, int]:
    """(rows, cols) of FLUX's image tokens: of the factorisations of their count, the one closest to the mask's
    aspect ratio (FLUX does not pass the latent's shape to block patches)."""
    aspect = mask_hw[1] / mask_hw[0]
    pairs = [(rows, image_tokens // rows) for rows in range(1, image_tokens + 1) if image_tokens % rows == 0]
    return min(pairs, key=lambda pair: abs(pair[1] / pair[0] / aspect - 1))


class PulidFluxBlock:
    """A ``dit`` double/single block replacement: the block (or the replacement before us), then the ID terms."""

    def __init__(self, kind: str, ca_index: int, faces: tuple, previous=None):
        self.kind, self.ca_index, self.faces, self.previous = kind, ca_index, faces, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extras):
        out = self.previous(args, extras) if self.previous is not None else extras["original_block"](args)
        options = args["transformer_options"]
        if self.kind == "double_block":
            options[TXT_LEN_KEY] = args["txt"].shape[1]
        faces = [face for face in self.faces if face.window.active(options["sigmas"])]
        if not faces:
            return out
        text_tokens = 0 if self.kind == "double_block" else options[TXT_LEN_KEY]
        img = out["img"][:, text_tokens:]
        deltas, masks = zip(*(face.contribution(self.ca_index, img, options) for face in faces), strict=True)
        img = add_contributions(img, list(deltas), list(masks))
        out = dict(out)
        out["img"] = img if text_tokens == 0 else torch.cat([out["img"][:, :text_tokens], img], dim=1)
        return out


def check_flux_model(model, pulid: PulidModel) -> list[tuple[str, int]]:
    """Where the cross-attentions act on this FLUX model; an error if they do not fit it."""
    diffusion_model = model.model.diffusion_model
    if not hasattr(diffusion_model, "double_blocks") or not hasattr(diffusion_model, "single_blocks"):
        raise PulidApplyError(
            f"{FLUX_NODE}: {pulid.name} is PuLID for FLUX, but this is a {type(model.model).__name__} model. Use a "
            "FLUX model, or Apply PuLID with pulid_v1.1.safetensors for SDXL."
        )
    indices = flux_injection_indices(len(diffusion_model.double_blocks), len(diffusion_model.single_blocks))
    hidden = diffusion_model.hidden_size if hasattr(diffusion_model, "hidden_size") else None
    ca_dim = pulid.module.pulid_ca[0].to_q.in_features
    if len(indices) != len(pulid.module.pulid_ca) or (hidden is not None and hidden != ca_dim):
        raise PulidApplyError(
            f"{FLUX_NODE}: {pulid.name} has {len(pulid.module.pulid_ca)} cross-attentions of width {ca_dim}, but "
            f"this FLUX model has {len(diffusion_model.double_blocks)} double and {len(diffusion_model.single_blocks)} "
            f"single blocks of width {hidden} ({len(indices)} injection points). PuLID FLUX is for FLUX.1 dev/schnell."
        )
    return indices


FLUX_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype(model) -> torch.dtype:
    """The dtype the model's blocks compute in (ComfyUI's ``get_dtype_inference``: the manual-cast dtype where the
    weights are stored in another one); bf16 for fp8 weights computed in fp8, as the official FLUX pipeline's
    ``pulid_ca`` runs in the FLUX model's bf16."""
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return dtype if dtype in FLUX_COMPUTE_DTYPES else torch.bfloat16


def apply_flux(model, face: FluxFace, indices: list[tuple[str, int]]):
    """A clone of ``model`` with ``face`` after every PuLID injection block, and the face's cross-attentions (in the
    model's compute dtype) registered with ComfyUI's model management (loaded with the model, offloaded with it)."""
    patched = model.clone()
    replaced = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for ca_index, (kind, block) in enumerate(indices):
        patch = with_face(replaced, (kind, block), face,
                          lambda faces, previous, k=kind, i=ca_index: PulidFluxBlock(k, i, faces, previous))
        patched.set_model_patch_replace(patch, "dit", kind, block)
    ca_patcher = comfy.model_patcher.ModelPatcher(face.cross_attentions, load_device=model.load_device,
                                                  offload_device=model.offload_device)
    existing = patched.get_additional_models_with_key("onestep_pulid")
    patched.set_additional_models("onestep_pulid", [*existing, ca_patcher])
    return patched


class ApplyPuLIDFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepApplyPuLIDFlux",
            display_name="Apply PuLID FLUX",
            category="OneStep/PuLID",
            description="Insert a face's identity into FLUX.1 with pulid_flux_v0.9.x weights: perceiver "
                        "cross-attentions after every 2nd double block and every 4th single block, through "
                        "ComfyUI's block patches (no monkey-patching).",
            inputs=common_inputs(),
            outputs=[io.Model.Output(display_name="model", tooltip="A patched clone of the model.")],
        )

    @classmethod
    def execute(cls, model, pulid: PulidModel, embedding: PulidEmbedding, weight, start_at, end_at,
                attn_mask=None, protected_identities=None) -> io.NodeOutput:
        check_inputs(pulid, embedding, protected_identities, "flux", FLUX_NODE)
        indices = check_flux_model(model, pulid)
        window = step_window(model, start_at, end_at, FLUX_NODE)
        face = FluxFace(embedding.cond, embedding.uncond, pulid.cross_attentions(compute_dtype(model)), weight,
                        window, check_mask(attn_mask, FLUX_NODE))
        return io.NodeOutput(apply_flux(model, face, indices))
