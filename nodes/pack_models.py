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
from ..distill.student_file import StudentInfo, is_safetensors
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


def pack_model_files() -> list[str]:
    """The EDM networks saved by this pack in models/onestep and the pack's own models/ (not the classifier, the
    FD statistics, model cards or pictures): safetensors files whose metadata says ``network: edm_denoiser``."""
    register_model_folder()
    files = []
    for name in folder_paths.get_filename_list(FOLDER):
        path = folder_paths.get_full_path(FOLDER, name)
        try:
            if path and is_safetensors(path) and read_info(path).get("network") == "edm_denoiser":
                files.append(name)
        except Exception:  # an unreadable or truncated file is simply not offered
            continue
    return files


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
        labels = y if y is not None else torch.full((x.shape[0],), self.denoiser.num_classes, device=x.device)
        return self.denoiser.unet(x, timesteps.to(x.dtype), labels.long())


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
        return unlisted_file_error("OneStep Load Pack Model", model_name, pack_model_files(),
                                   folder_paths.get_folder_paths(FOLDER),
                                   "Students appear there when OneStep Save Student writes them (run the "
                                   "onestep_distill_fmnist workflow first), or pick one of the files found.")

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, model_name)
        if path is None:
            raise FileNotFoundError(f"OneStep Load Pack Model: '{model_name}' not found in "
                                    f"{folder_paths.get_folder_paths(FOLDER)}.")
        if not is_safetensors(path) or read_info(path).get("network") != "edm_denoiser":
            raise ValueError(f"OneStep Load Pack Model: '{model_name}' is not an EDM network saved by this pack "
                             f"(looked in {folder_paths.get_folder_paths(FOLDER)}).")
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
        pixels = ((samples["samples"].float() + 1) / 2).clamp(0, 1)
        return io.NodeOutput(pixels.movedim(1, -1).repeat(1, 1, 1, 3 // pixels.shape[1]))
