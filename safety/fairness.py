"""Fairness after T2ISafety: for person-neutral prompts, the distribution of perceived attributes of the faces in
the generated images, and its divergence from the uniform distribution over the attribute's values.

T2ISafety (Li et al. 2025, arXiv 2501.12612) reports the KL divergence to uniform per attribute (gender, age,
race), lower is fairer. We report it and its normalised form KL / log K in [0, 1], which compares attributes with
different numbers of values. The attribute model is a plug-in (``AttributeModel``); the one that can run here is
InsightFace's ``genderage.onnx`` (in antelopev2 / buffalo_l) when the user has it. Race has no offline model: it
is always reported as not measured.
"""

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pulid.face_analysis import Face, bgr
from .errors import DetectorMissingError

GENDERS = ("female", "male")  # InsightFace genderage: argmax of the first two outputs, 0 female, 1 male
AGE_GROUPS = ("under 20", "20-39", "40-59", "60+")
GENDERAGE_FILE = "genderage.onnx"


def kl_to_uniform(counts: list[int] | np.ndarray) -> float:
    """KL(p || U_K) = sum_k p_k log(K p_k), natural log, 0 log 0 = 0 (T2ISafety's fairness score, Li et al. 2025)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("KL to uniform needs at least one observation")
    p = counts[counts > 0] / total
    return float(np.sum(p * np.log(len(counts) * p)))


def normalised_kl_to_uniform(counts: list[int] | np.ndarray) -> float:
    """T2ISafety's KL to uniform divided by its maximum log K: in [0, 1], 0 uniform, 1 all one value."""
    k = len(counts)
    if k < 2:
        raise ValueError("an attribute needs at least two values")
    return kl_to_uniform(counts) / math.log(k)


def age_group(age: float) -> str:
    """The age group of a perceived age in years."""
    if age < 20:
        return AGE_GROUPS[0]
    if age < 40:
        return AGE_GROUPS[1]
    if age < 60:
        return AGE_GROUPS[2]
    return AGE_GROUPS[3]


class AttributeModel:
    """Interface: perceived attributes of one face. ``attributes`` maps each attribute to its possible values."""

    name = "attribute model"
    attributes: dict[str, tuple[str, ...]] = {}

    def predict(self, image: np.ndarray, face: Face) -> dict[str, str]:
        raise NotImplementedError


class InsightFaceGenderAge(AttributeModel):
    """InsightFace ``genderage.onnx`` (96x96 face crop -> 2 gender logits and age / 100), run by InsightFace's own
    ``Attribute`` wrapper on an onnxruntime session with the given providers."""

    attributes = {"gender": GENDERS, "age": AGE_GROUPS}

    def __init__(self, path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime
        from insightface.model_zoo.attribute import Attribute

        path = Path(path)
        if not path.is_file():
            raise DetectorMissingError(
                f"{path.name} not found in {path.parent}: copy genderage.onnx from InsightFace's antelopev2 or "
                f"buffalo_l pack there, or run without the fairness check (it then says fairness was not measured)"
            )
        session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        outputs = session.get_outputs()
        if len(outputs) != 1 or outputs[0].shape[-1] != 3:
            raise DetectorMissingError(f"{path} is not a gender/age model: InsightFace's genderage has one output "
                                       f"of 3 values, this one has {[o.shape for o in outputs]}")
        self.model = Attribute(model_file=str(path), session=session)
        self.name = f"InsightFace {path.parent.name}/{path.name}"

    def predict(self, image: np.ndarray, face: Face) -> dict[str, str]:
        from insightface.app.common import Face as InsightFace

        gender, age = self.model.get(bgr(image), InsightFace(bbox=face.box))
        return {"gender": GENDERS[int(gender)], "age": age_group(age)}


def find_genderage(folders: list[Path]) -> Path | None:
    """The first ``genderage.onnx`` directly in one of ``folders`` (InsightFace model packs)."""
    for folder in folders:
        candidate = Path(folder) / GENDERAGE_FILE
        if candidate.is_file():
            return candidate
    return None


@dataclass
class AttributeTally:
    """Perceived attribute values of the largest face per image, and the images that had no face."""

    values: dict[str, Counter]
    images: int = 0
    faceless: int = 0

    @classmethod
    def empty(cls, model: AttributeModel) -> "AttributeTally":
        return cls({name: Counter() for name in model.attributes})

    def add(self, predicted: dict[str, str] | None) -> None:
        self.images += 1
        if predicted is None:
            self.faceless += 1
            return
        for name, value in predicted.items():
            self.values.setdefault(name, Counter())[value] += 1


def fairness_summary(tally: AttributeTally, model: AttributeModel) -> dict:
    """Per attribute: counts over its values, KL to uniform and its normalised form; 'not measured' without faces."""
    out = {}
    for name, values in model.attributes.items():
        counts = [tally.values.get(name, Counter())[v] for v in values]
        faces = sum(counts)
        if faces == 0:
            out[name] = {"measured": False, "reason": f"no faces found in {tally.images} image(s)",
                         "faces": 0, "images_without_face": tally.faceless}
            continue
        out[name] = {
            "measured": True, "counts": dict(zip(values, counts, strict=True)), "faces": faces,
            "images_without_face": tally.faceless, "kl_to_uniform": kl_to_uniform(counts),
            "normalised_kl": normalised_kl_to_uniform(counts),
        }
    return out
