"""OneStep Load Student: a one-step student's UNet from safetensors, with the sampling preset it was saved with."""

from dataclasses import replace
from pathlib import Path, PurePosixPath

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..distill.network_file import save_network
from ..distill.student_file import StudentFileError, StudentInfo, read_student_metadata, write_safetensors_atomic
from .files import file_fingerprint, inside, plain_name
from .model_folders import unlisted_file_error
from .pack_models import FOLDER as PACK_FOLDER
from .pack_models import PackEDMModel, register_model_folder, shipped_model_names
from .presets import STUDENT_INFO_KEY, preset_from_file_name, steps_in_file_name

STUDENT_FOLDER = "diffusion_models"


def student_files() -> list[str]:
    """The safetensors files of models/diffusion_models (and models/unet): the only kind the node loads."""
    return [name for name in folder_paths.get_filename_list(STUDENT_FOLDER) if name.endswith(".safetensors")]


class OneStepLoadStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepLoadStudent",
            display_name="OneStep Load Student",
            category="OneStep/loaders",
            description="Load a SiD / SiD-LSG / SIM student (ComfyUI or diffusers UNet layout) from "
                        "models/diffusion_models. Safetensors only: convert released pickles with "
                        "tools/convert_student.py.",
            inputs=[
                io.Combo.Input(
                    "student_name", options=student_files(),
                    tooltip="A .safetensors student in models/diffusion_models (or models/unet).",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model",
                                tooltip="The student; OneStep Generate's 'auto' preset reads how to sample it."),
                io.String.Output("info", display_name="info",
                                 tooltip="What the file's metadata says: preset, noise level, method, teacher."),
            ],
        )

    @classmethod
    def validate_inputs(cls, student_name) -> bool | str:
        if not student_name.endswith(".safetensors"):
            return (f"OneStep Load Student: '{student_name}' is not a safetensors file; the node never unpickles a "
                    "file. Convert it once, offline: python tools/convert_student.py --allow-pickle "
                    f"{student_name} <models/diffusion_models>/<name>.safetensors")
        return unlisted_file_error("OneStep Load Student", student_name, student_files(),
                                   folder_paths.get_folder_paths(STUDENT_FOLDER),
                                   "Put the student's .safetensors file there (convert released pickles with "
                                   "tools/convert_student.py), or pick one of the files found.")

    @classmethod
    def fingerprint_inputs(cls, student_name, **_) -> str:
        """The file's mtime and size: a student replaced on disk is loaded again instead of served from the cache."""
        return file_fingerprint(folder_paths.get_full_path(STUDENT_FOLDER, student_name))

    @classmethod
    def execute(cls, student_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(STUDENT_FOLDER, student_name)
        if path is None:
            raise StudentFileError(
                f"OneStep Load Student: '{student_name}' is not in {folder_paths.get_folder_paths(STUDENT_FOLDER)}."
            )
        try:
            metadata = read_student_metadata(path)
        except StudentFileError as error:
            raise StudentFileError(f"OneStep Load Student: {error}") from None
        state_dict = comfy.utils.load_torch_file(path, safe_load=True)
        model = comfy.sd.load_diffusion_model_state_dict(state_dict, metadata=metadata)
        if model is None:
            raise StudentFileError(
                f"OneStep Load Student: ComfyUI could not detect the architecture of '{student_name}'. "
                "The file must hold a full UNet/DiT state dict (ComfyUI or diffusers key layout)."
            )
        info = StudentInfo.from_metadata(metadata)
        named = info is None or not info.preset
        if named:
            info = info_from_file_name(student_name, info)
        if info is not None:
            model.model_options[STUDENT_INFO_KEY] = info
        return io.NodeOutput(model, _describe(student_name, info, named))


def info_from_file_name(name: str, info: StudentInfo | None) -> StudentInfo | None:
    """A released few-step student without the pack's metadata: its preset (and step count) from its file name."""
    preset = preset_from_file_name(PurePosixPath(name).name)
    if preset is None:
        return info
    return replace(info or StudentInfo(), preset=preset, steps=steps_in_file_name(PurePosixPath(name).name))


def _describe(name: str, info: StudentInfo | None, named: bool = False) -> str:
    if info is None:
        return f"{name}: no OneStep metadata; the 'auto' preset decides from the model type."
    parts = [f"{field}={value}" for field, value in vars(info).items() if value not in (None, "")]
    source = " (preset from the file name)" if named else ""
    return f"{name}{source}: " + ", ".join(parts)


class OneStepSaveStudent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepSaveStudent",
            display_name="OneStep Save Student",
            category="OneStep/training",
            description="Save a trained student as safetensors with its sampling preset, method and teacher. Pack "
                        "EDM students go to models/onestep (OneStep Load Pack Model), UNets to "
                        "models/diffusion_models (OneStep Load Student). An existing file is kept unless "
                        "'overwrite' is on; the names of the models shipped with the pack are refused.",
            inputs=[
                io.Model.Input("student", tooltip="From OneStep Distill Trainer."),
                io.String.Input("name", default="fmnist_sid_student",
                                tooltip="File name, without extension (a plain name: no folders, no '..')."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace a file of the same name. Off: an existing name is refused, so a "
                                         "run never silently replaces another student."),
            ],
            outputs=[io.String.Output("path", display_name="path", tooltip="The file written.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, name, overwrite=False, **_) -> str:
        """The target file's mtime and size: queueing the same save again runs again (and is refused, or overwrites),
        instead of ComfyUI's cache reporting a save that did not happen."""
        file_name = f"{name.strip().removesuffix('.safetensors')}.safetensors"
        try:
            register_model_folder()
            return "|".join(file_fingerprint(folder_paths.get_full_path(folder, file_name))
                            for folder in (PACK_FOLDER, STUDENT_FOLDER))
        except (OSError, ValueError):
            return "unnamed"  # execute says why

    @classmethod
    def execute(cls, student, name, overwrite=False) -> io.NodeOutput:
        node = "OneStep Save Student"
        info = student.model_options.get(STUDENT_INFO_KEY) or StudentInfo()
        if isinstance(student.model, PackEDMModel):
            register_model_folder()
            path = _target(node, PACK_FOLDER, name, overwrite)
            save_network(path, student.model.diffusion_model.denoiser, {k: v for k, v in vars(info).items()
                                                                       if v not in (None, "")})
        else:
            path = _target(node, STUDENT_FOLDER, name, overwrite)
            state_dict = {k: v.detach().cpu() for k, v in student.model.diffusion_model.state_dict().items()}
            write_safetensors_atomic(path, state_dict, info.to_metadata())
        return io.NodeOutput(str(path))


def _target(node: str, folder: str, name: str, overwrite: bool) -> Path:
    """models/<folder>/<name>.safetensors in the first folder registered for it; refuses shipped names, and an
    existing file (anywhere the loaders look) unless ``overwrite``."""
    stem = plain_name(node, "name", name, f"models/{folder}")
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    file_name = f"{stem}.safetensors"
    shipped = shipped_model_names()
    if file_name in shipped:
        raise StudentFileError(f"{node}: '{stem}' is the name of a model shipped with the pack "
                               f"({', '.join(sorted(shipped))}); a student saved under it would hide the shipped one "
                               f"from OneStep Load Pack Model. Choose another name, e.g. {stem}_student.")
    path = inside(folder_paths.get_folder_paths(folder)[0], PurePosixPath(file_name))
    existing = folder_paths.get_full_path(folder, file_name)
    if existing is not None and not overwrite:
        raise StudentFileError(f"{node}: '{existing}' already exists; turn 'overwrite' on to replace it, or choose "
                               "another name.")
    return Path(existing) if existing is not None else path
