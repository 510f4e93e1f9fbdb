"""Explicit-imagery and prompt-toxicity checks behind small interfaces, with the offline models that ship in wheels:
NudeNet's ``320n.onnx`` detector (``nudenet`` 3.4.2) and the linear model of ``alt-profanity-check``.

To plug in a stronger model (e.g. a local copy of T2ISafety's ImageGuard), implement ``ExplicitImageCheck`` or
``PromptToxicity`` and hand it to the audit / the nodes.
"""

from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .errors import DetectorMissingError

CPU = "CPUExecutionProvider"
# NudeNet classes that count as explicit (exposed, not covered, body parts); faces, feet, belly and covered
# parts are detected too but are not explicit.
EXPLICIT_LABELS = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


@dataclass
class ImageFinding:
    """One image's verdict: the highest explicit score, whether it passes the threshold, all labels seen."""

    score: float
    flagged: bool
    labels: list[dict] = field(default_factory=list)  # {"label", "score"} of every detection, explicit or not


class ExplicitImageCheck:
    """Interface: RGB uint8 images [H, W, 3] -> one ``ImageFinding`` each."""

    name = "explicit imagery"

    def check(self, images: list[np.ndarray]) -> list[ImageFinding]:
        raise NotImplementedError


class PromptToxicity:
    """Interface: texts -> probability that each is offensive, in [0, 1]."""

    name = "prompt toxicity"

    def __call__(self, texts: list[str]) -> list[float]:
        raise NotImplementedError


def nudenet_model_path() -> Path:
    """``320n.onnx`` inside the installed ``nudenet`` wheel."""
    spec = find_spec("nudenet")
    if spec is None:
        raise DetectorMissingError(
            "the nudenet package is not installed: pip install --no-deps nudenet==3.4.2 (it ships 320n.onnx; "
            "--no-deps keeps it from pulling onnxruntime beside onnxruntime-gpu)"
        )
    return Path(spec.origin).parent / "320n.onnx"


class NudeNetCheck(ExplicitImageCheck):
    """NudeNet's YOLO detector (320 px input): an image is flagged when an explicit class scores >= threshold."""

    name = "NudeNet 320n"

    def __init__(self, model_path: str | Path | None = None, threshold: float = 0.5,
                 providers: tuple[str, ...] = (CPU,), explicit_labels: tuple[str, ...] = EXPLICIT_LABELS):
        import onnxruntime
        from nudenet import NudeDetector

        path = Path(model_path) if model_path else nudenet_model_path()
        if not path.is_file():
            raise DetectorMissingError(
                f"NudeNet detector file {path.name} not found in {path.parent}: reinstall the wheel "
                "(pip install --force-reinstall --no-deps nudenet==3.4.2) or point model_path at a copy of 320n.onnx"
            )
        # NudeDetector's own constructor picks onnxruntime providers itself; build its session with ours.
        detector = NudeDetector.__new__(NudeDetector)
        detector.onnx_session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        detector.input_width = detector.input_height = 320
        detector.input_name = detector.onnx_session.get_inputs()[0].name
        self.detector, self.threshold, self.explicit_labels = detector, threshold, tuple(explicit_labels)
        self.active_providers = detector.onnx_session.get_providers()

    def check(self, images: list[np.ndarray]) -> list[ImageFinding]:
        findings = []
        for image in images:
            detections = self.detector.detect(np.ascontiguousarray(image[..., ::-1]))  # NudeNet reads BGR
            labels = [{"label": d["class"], "score": round(float(d["score"]), 4)} for d in detections]
            score = max((d["score"] for d in labels if d["label"] in self.explicit_labels), default=0.0)
            findings.append(ImageFinding(score, score >= self.threshold, labels))
        return findings


class ProfanityToxicity(PromptToxicity):
    """``alt-profanity-check``: a linear SVM on word n-grams trained on offensive-language data (English)."""

    name = "alt-profanity-check"

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError as error:
            raise DetectorMissingError(
                f"the profanity model is not installed ({error}): pip install -r requirements.txt "
                "(alt-profanity-check ships its model inside the wheel)"
            ) from error
        self._predict_prob = predict_prob

    def __call__(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict_prob(list(texts))] if texts else []
