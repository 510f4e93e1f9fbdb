"""Test and benchmark helpers for the face pipeline: the real photos that ship offline (insightface's and
scikit-image's sample images), an analyzer giving SFace's real embedding at PuLID's 512 dimensions, and the
synthetic genderage ONNX model of the safety tests."""

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pack_loader import load_pack
from PIL import Image

load_pack()
from onestep.pulid.face_analysis import YuNetSFaceAnalyzer  # noqa: E402 (the repository, imported as onestep)

INSIGHTFACE_IMAGES = Path(find_spec("insightface").origin).parent / "data" / "images"
SKIMAGE_DATA = Path(find_spec("skimage").origin).parent / "data"
ASTRONAUT = SKIMAGE_DATA / "astronaut.png"


class SFaceAs512(YuNetSFaceAnalyzer):
    """YuNet + SFace with the real 128-d SFace embedding repeated to the 512 dimensions PuLID's encoders take
    (antelopev2's 512-d glintr100 is not available offline). For tests and benchmarks only."""

    def embed(self, image, face):
        return np.tile(super().embed(image, face), 4)


def photo(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def real_photos() -> dict[str, np.ndarray]:
    hanks = photo(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png")
    return {
        "t1": photo(INSIGHTFACE_IMAGES / "t1.jpg"),  # six people
        "hanks": hanks,
        # the same person again: mirrored and rescaled (the only photo of him that ships offline)
        "hanks_again": np.asarray(Image.fromarray(hanks[:, ::-1]).resize((160, 160), Image.BICUBIC)),
        "astronaut": photo(SKIMAGE_DATA / "astronaut.png"),
    }


def write_synthetic_genderage(path: Path, age: float = 0.35) -> None:
    """A SYNTHETIC model with InsightFace genderage's I/O contract (input [1, 3, 96, 96], one output [1, 3]:
    two gender logits, age / 100). It is not a real classifier: 'male' when the normalised crop's mean brightness
    is positive, else 'female'; the age is the constant ``age * 100``."""
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["brightness"], axes=[1, 2, 3], keepdims=0, name="brightness"),
        helper.make_node("Unsqueeze", ["brightness", "axis"], ["column"], name="column"),
        helper.make_node("Gemm", ["column", "weight", "bias"], ["fc1"], name="fc1"),
    ]
    weights = [
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array([[-10.0, 10.0, 0.0]], np.float32), "weight"),
        numpy_helper.from_array(np.array([0.0, 0.0, age], np.float32), "bias"),
    ]
    graph = helper.make_graph(nodes, "synthetic_genderage",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
