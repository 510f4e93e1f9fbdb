"""The pack's own EDM networks (the Fashion-MNIST teacher and its students) as ordinary ComfyUI MODELs.

They denoise in pixel space: a "latent" here is the image itself, one channel in [-1, 1]. ComfyUI's EDM
model type supplies the preconditioning (c_in on the input, c_skip / c_out on the output, c_noise =
ln(sigma) / 4 as the timestep), so the ComfyUI model wraps the raw network F of ``EDMDenoiser``.
"""

from dataclasses import fields
from pathlib import Path

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import folder_paths
import torch
from comfy_api.latest import io

from ..distill.network_file import load_network, read_info
from ..distill.networks import EDMDenoiser
from ..distill.student_file import StudentInfo, safetensors_problem
from .files import file_fingerprint
from .model_folders import ensure_model_folder, unlisted_file_error
from .presets import STUDENT_INFO_KEY

PACK_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
FOLDER = "onestep"
CLASS_LABEL_KEY = "onestep_class_label"
FMNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]


def register_model_folder() -> None:
    """models/onestep in the user's ComfyUI, plus the networks shipped with the pack."""
    ensure_model_folder(FOLDER)
    for shipped in sorted(PACK_MODELS_DIR.glob("*/")):
        folder_paths.add_model_folder_path(FOLDER, str(shipped))


def shipped_model_names() -> set[str]:
    """File names of the networks shipped with the pack (as OneStep Load Pack Model lists them)."""
    return {path.name for path in PACK_MODELS_DIR.glob("*/*.safetensors")}


def pack_network_problem(path: str | None) -> str | None:
    """None for an EDM network saved by this pack, else what the file is instead."""
    if path is None:
        return "no such file"
    problem = safetensors_problem(path)
    if problem is not None:
        return f"not a readable safetensors file ({problem}); save or copy it again"
    try:
        kind = read_info(path).get("network")
    except (ValueError, UnicodeDecodeError) as error:  # metadata that is not this pack's JSON
        return f"its metadata is not a pack network's ({type(error).__name__}: {error})"
    if kind != "edm_denoiser":
        return (f"it holds a pack {kind} network, not an EDM denoiser" if kind else
                "it has no onestep.network metadata (reference statistics or another program's file?)")
    return None


def not_a_pack_network(model_name: str, path: str) -> str:
    return (f"OneStep Load Pack Model: '{model_name}' is not an EDM network saved by this pack: "
            f"{pack_network_problem(path)} (looked in {folder_paths.get_folder_paths(FOLDER)}). Choose the teacher "
            "or a student saved by OneStep Save Student.")


def pack_model_files() -> list[str]:
    """The EDM networks saved by this pack in models/onestep and the pack's own models/ (not the classifier, the
    FD statistics, model cards or pictures): safetensors files whose metadata says ``network: edm_denoiser``."""
    register_model_folder()
    return [name for name in folder_paths.get_filename_list(FOLDER)
            if pack_network_problem(folder_paths.get_full_path(FOLDER, name)) is None]


class PixelLatent(comfy.latent_formats.LatentFormat):
    """Grayscale pixels in [-1, 1] used directly as the latent."""

    latent_channels = 1
    scale_factor = 1.0
    spacial_downscale_ratio = 1


class RawEDMNetwork(torch.nn.Module):
    """F(c_in x, c_noise, label) of an EDMDenoiser, with the call signature of ComfyUI's diffusion models."""

    def __init__(self, network_config: dict, device=None, operations=None, dtype=None):
        super().__init__()
        self.dtype = dtype or torch.float32  # ComfyUI reads the diffusion model's dtype
        self.denoiser = EDMDenoiser(**network_config).to(device=device, dtype=self.dtype)

    def forward(self, x, timesteps, context=None, y=None, **kwargs):
        check_pixel_shape("OneStep pack model (from OneStep Load Pack Model or the trainer)", self.denoiser,
                          tuple(x.shape))
        labels = y if y is not None else torch.full((x.shape[0],), self.denoiser.num_classes, device=x.device)
        return self.denoiser.unet(x, timesteps.to(x.dtype), labels.long())


def pixel_size_multiple(denoiser: EDMDenoiser) -> int:
    """Image sides must divide by this: the UNet halves the resolution between its levels."""
    return 2 ** (len(denoiser.config()["channels"]) - 1)


def check_pixel_shape(node: str, denoiser: EDMDenoiser, shape: tuple) -> None:
    """Refuse, with the fix, a latent a pack network cannot take: wrong channel count, or a side that its levels
    cannot halve evenly (a bare 'Sizes of tensors must match' otherwise)."""
    channels, multiple = denoiser.config()["in_channels"], pixel_size_multiple(denoiser)
    if len(shape) != 4 or shape[1] != channels:
        raise ValueError(f"{node}: the pack's pixel-space network takes [batch, {channels}, height, width] "
                         f"grayscale pixels, got a latent of shape {list(shape)}. Make the latent with OneStep "
                         f"Generate (or an empty {channels}-channel latent), not Empty Latent Image.")
    height, width = shape[2], shape[3]
    if height % multiple or width % multiple:
        raise ValueError(f"{node}: {width}x{height} pixels is not a multiple of {multiple} (the pack's pixel UNet "
                         f"halves the resolution {multiple.bit_length() - 1} times); use e.g. "
                         f"{max(multiple, width // multiple * multiple)}x{max(multiple, height // multiple * multiple)}"
                         " (the Fashion-MNIST models are trained at 28x28).")


class PackEDMModel(comfy.model_base.BaseModel):
    """BaseModel whose class label comes from the conditioning's ``onestep_class_label`` entry."""

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        label = kwargs.get(CLASS_LABEL_KEY)
        if label is not None:
            out["y"] = comfy.conds.CONDRegular(label.reshape(1))
        return out


class PackEDMConfig(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    latent_format = PixelLatent
    memory_usage_factor = 0.1

    def __init__(self, network_config: dict):
        super().__init__({"network_config": network_config})
        self.sampling_settings = {"sigma_min": 0.002, "sigma_max": 80.0,
                                  "sigma_data": network_config.get("sigma_data", 0.5)}

    def get_model(self, state_dict, prefix="", device=None):
        return PackEDMModel(self, model_type=comfy.model_base.ModelType.EDM, device=device, unet_model=RawEDMNetwork)


def edm_model_patcher(denoiser: EDMDenoiser) -> comfy.model_patcher.ModelPatcher:
    """Wrap an EDMDenoiser's weights as a ComfyUI MODEL (a ModelPatcher around a BaseModel)."""
    model_config = PackEDMConfig(denoiser.config())
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({})
    base_model.diffusion_model.denoiser.load_state_dict(denoiser.state_dict())
    return comfy.model_patcher.ModelPatcher(base_model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class OneStepLoadPackModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_model_folder()
        return io.Schema(
            node_id="OneStepLoadPackModel",
            display_name="OneStep Load Pack Model",
            category="OneStep/loaders",
            description="Load one of the pack's own EDM networks (the shipped Fashion-MNIST teacher, or a student "
                        "trained from it) as a MODEL the stock samplers and OneStep Generate can sample.",
            inputs=[io.Combo.Input("model_name", options=pack_model_files(),
                                   tooltip="A .safetensors EDM network in models/onestep or shipped with the pack.")],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="Pixel-space model: decode with OneStep Pixels To Image.")],
        )

    @classmethod
    def validate_inputs(cls, model_name) -> bool | str:
        register_model_folder()
        path = folder_paths.get_full_path(FOLDER, model_name)
        if path is not None and pack_network_problem(path) is not None:  # there, but not a network it can load
            return not_a_pack_network(model_name, path)
        return unlisted_file_error("OneStep Load Pack Model", model_name, pack_model_files(),
                                   folder_paths.get_folder_paths(FOLDER),
                                   "Students appear there when OneStep Save Student writes them (run the "
                                   "onestep_distill_fmnist workflow first), or pick one of the files found.")

    @classmethod
    def fingerprint_inputs(cls, model_name, **_) -> str:
        """The file's mtime and size: a file changed or deleted on disk is loaded again, not served from the cache."""
        register_model_folder()
        return file_fingerprint(folder_paths.get_full_path(FOLDER, model_name))

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        register_model_folder()
        path = folder_paths.get_full_path(FOLDER, model_name)
        if path is None:
            raise FileNotFoundError(f"OneStep Load Pack Model: '{model_name}' not found in "
                                    f"{folder_paths.get_folder_paths(FOLDER)}.")
        if pack_network_problem(path) is not None:
            raise ValueError(not_a_pack_network(model_name, path))
        model = edm_model_patcher(load_network(path))
        info = read_info(path)
        student = {field.name: info[field.name] for field in fields(StudentInfo) if field.name in info}
        if student.get("preset"):
            model.model_options[STUDENT_INFO_KEY] = StudentInfo(**student)
        return io.NodeOutput(model)


class OneStepClassLabel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepClassLabel",
            display_name="OneStep Class Label",
            category="OneStep/conditioning",
            description="Conditioning for a class-conditional pack model (Fashion-MNIST: 0 t-shirt ... 9 ankle boot). "
                        "-1 is the unconditional class, the usual negative for cfg.",
            inputs=[io.Int.Input("class_label", default=0, min=-1, max=9,
                                 tooltip="0..9: " + ", ".join(FMNIST_CLASSES) + "; -1: unconditional.")],
            outputs=[io.Conditioning.Output(display_name="conditioning",
                                            tooltip="Use as positive (or, with -1, as negative) conditioning.")],
        )

    @classmethod
    def execute(cls, class_label) -> io.NodeOutput:
        label = len(FMNIST_CLASSES) if class_label < 0 else class_label
        return io.NodeOutput([[torch.zeros(1, 1, 1), {CLASS_LABEL_KEY: torch.tensor([label])}]])


class OneStepPixelsToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepPixelsToImage",
            display_name="OneStep Pixels To Image",
            category="OneStep/conditioning",
            description="Turn a pixel-space LATENT of a pack model (grayscale in [-1, 1]) into an IMAGE.",
            inputs=[io.Latent.Input("samples", tooltip="Samples of a pack model.")],
            outputs=[io.Image.Output(display_name="image", tooltip="RGB images in [0, 1].")],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        channels = samples["samples"].shape[1] if samples["samples"].ndim == 4 else None
        if channels not in (1, 3):
            raise ValueError(f"OneStep Pixels To Image: the samples have shape {tuple(samples['samples'].shape)}; "
                             "expected pixel-space samples of a pack model [batch, 1 (or 3), height, width]. A "
                             f"{channels}-channel latent comes from a latent-space model: decode it with VAE Decode "
                             "instead.")
        pixels = ((samples["samples"].float() + 1) / 2).clamp(0, 1)
        return io.NodeOutput(pixels.movedim(1, -1).repeat(1, 1, 1, 3 // pixels.shape[1]))
