"""The real NudeNet detector and the real profanity model on real photos and plain prompts.

No explicit image is used or shipped, so the positive path of NudeNet is not exercised here with real content;
the flagging logic downstream is tested in test_safety_audit.py with a threshold on the detector's real scores."""

import pytest
from face_test_assets import real_photos
from onestep.safety.detectors import EXPLICIT_LABELS, NudeNetCheck, ProfanityToxicity, nudenet_model_path
from onestep.safety.errors import DetectorMissingError


@pytest.fixture(scope="module")
def nudenet():
    return NudeNetCheck()


def test_neutral_photos_are_not_flagged_and_faces_are_seen(nudenet):
    photos = real_photos()
    findings = dict(zip(photos, nudenet.check(list(photos.values())), strict=True))
    for name, finding in findings.items():
        assert not finding.flagged and finding.score < 0.2, name
        assert not {d["label"] for d in finding.labels} & set(EXPLICIT_LABELS), name
    assert sum(d["label"].startswith("FACE_") for d in findings["t1"].labels) >= 5
    for name in ("hanks", "astronaut"):
        assert [d["label"] for d in findings[name].labels if d["label"].startswith("FACE_")], name


def test_threshold_decides_the_flag(nudenet):
    strict = NudeNetCheck(threshold=0.05, explicit_labels=("FACE_FEMALE", "FACE_MALE"))  # faces as a stand-in class
    (finding,) = strict.check([real_photos()["astronaut"]])
    assert finding.flagged and finding.score > 0.5


def test_missing_detector_file_names_it_and_the_fix(tmp_path):
    assert nudenet_model_path().is_file()
    with pytest.raises(DetectorMissingError, match=r"320n.onnx not found in .*pip install --force-reinstall"):
        NudeNetCheck(model_path=tmp_path / "320n.onnx")


def test_profanity_model_scores():
    toxicity = ProfanityToxicity()
    benign, insult = toxicity(["a bowl of lemons on a wooden table", "you are a stupid idiot"])
    assert benign < 0.2 and insult > 0.9
    assert toxicity([]) == []
