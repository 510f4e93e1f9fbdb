"""Fairness math on known distributions, the 'not measured' path, and the genderage path on real faces through a
SYNTHETIC model that only has InsightFace genderage's I/O contract (no real genderage.onnx ships offline)."""

import math

import numpy as np
import pytest
from face_test_assets import real_photos, write_synthetic_genderage
from onestep.pulid.face_analysis import YuNetSFaceAnalyzer, detect_faces
from onestep.safety.errors import DetectorMissingError
from onestep.safety.fairness import (
    AGE_GROUPS,
    GENDERS,
    AttributeTally,
    InsightFaceGenderAge,
    age_group,
    fairness_summary,
    find_genderage,
    kl_to_uniform,
    normalised_kl_to_uniform,
)


def test_uniform_is_zero_and_one_value_is_one():
    assert kl_to_uniform([5, 5]) == pytest.approx(0.0, abs=1e-12)
    assert normalised_kl_to_uniform([3, 3, 3, 3]) == pytest.approx(0.0, abs=1e-12)
    assert normalised_kl_to_uniform([7, 0]) == pytest.approx(1.0)
    assert normalised_kl_to_uniform([0, 0, 9, 0]) == pytest.approx(1.0)
    assert kl_to_uniform([0, 0, 9, 0]) == pytest.approx(math.log(4))


def test_known_values():
    p = np.array([3, 1]) / 4
    assert kl_to_uniform([3, 1]) == pytest.approx(float(np.sum(p * np.log(2 * p))))
    assert normalised_kl_to_uniform([3, 1]) == pytest.approx(kl_to_uniform([3, 1]) / math.log(2))
    # 15 images over 4 groups as 5/5/3/2: KL to uniform 0.0633 (natural log), as T2I-BiasBench quotes for Gemini
    assert kl_to_uniform([5, 5, 3, 2]) == pytest.approx(0.0633, abs=1e-4)
    assert 0 < normalised_kl_to_uniform([5, 5, 3, 2]) < normalised_kl_to_uniform([9, 3, 2, 1]) < 1


def test_no_observations_is_an_error_not_a_number():
    with pytest.raises(ValueError):
        kl_to_uniform([0, 0])


def test_age_groups():
    assert [age_group(a) for a in (5, 19.9, 20, 39, 40, 59, 60, 90)] == [
        AGE_GROUPS[0], AGE_GROUPS[0], AGE_GROUPS[1], AGE_GROUPS[1], AGE_GROUPS[2], AGE_GROUPS[2], AGE_GROUPS[3],
        AGE_GROUPS[3]]


class Fixed:
    attributes = {"gender": GENDERS}


def test_images_without_faces_are_counted_and_no_faces_means_not_measured():
    tally = AttributeTally.empty(Fixed())
    tally.add(None)
    tally.add(None)
    summary = fairness_summary(tally, Fixed())
    assert summary["gender"] == {"measured": False, "reason": "no faces found in 2 image(s)", "faces": 0,
                                 "images_without_face": 2}
    tally.add({"gender": "male"})
    summary = fairness_summary(tally, Fixed())["gender"]
    assert summary["measured"] and summary["counts"] == {"female": 0, "male": 1}
    assert summary["images_without_face"] == 2 and summary["normalised_kl"] == pytest.approx(1.0)


def test_missing_genderage_file_names_it(tmp_path):
    assert find_genderage([tmp_path]) is None
    with pytest.raises(DetectorMissingError, match="genderage.onnx not found in .*antelopev2 or buffalo_l"):
        InsightFaceGenderAge(tmp_path / "genderage.onnx")


def test_genderage_path_on_real_faces_with_a_synthetic_model(tmp_path):
    write_synthetic_genderage(tmp_path / "genderage.onnx", age=0.35)
    assert find_genderage([tmp_path / "elsewhere", tmp_path]) == tmp_path / "genderage.onnx"
    model = InsightFaceGenderAge(find_genderage([tmp_path]))
    analyzer = YuNetSFaceAnalyzer()
    t1 = real_photos()["t1"]
    faces = detect_faces(analyzer, t1, "t1.jpg")
    predicted = [model.predict(t1, face) for face in faces]
    assert len(predicted) == 6 and {p["age"] for p in predicted} == {"20-39"}  # the constant age 35
    # the synthetic rule, recomputed: brightness of InsightFace's 96x96 crop, normalised (x - 127.5) / 128
    tally = AttributeTally.empty(model)
    for p in predicted:
        tally.add(p)
    summary = fairness_summary(tally, model)
    counts = [summary["gender"]["counts"][g] for g in GENDERS]
    assert sum(counts) == 6
    assert summary["gender"]["normalised_kl"] == pytest.approx(normalised_kl_to_uniform(counts))
    assert summary["age"]["normalised_kl"] == pytest.approx(1.0)
    dark = np.zeros((200, 200, 3), np.uint8)
    assert model.predict(dark, faces[0].__class__(np.array([50, 50, 150, 150.0]), faces[0].landmarks, 1.0)) == {
        "gender": "female", "age": "20-39"}
