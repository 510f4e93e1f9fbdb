"""The safety nodes inside the real comfy package: the audit on a class-conditional pack EDM model, the check with
a filtered batch, the gallery loader, the prompt gate, and their errors."""

import json

import folder_paths
import numpy as np
import pytest
import torch
from face_test_assets import real_photos, write_synthetic_genderage
from onestep.nodes.safety import (
    BUILTIN,
    YUNET,
    OneStepProtectedIdentities,
    OneStepSafetyAudit,
    OneStepSafetyCheck,
    OneStepSafetyPromptGate,
)
from onestep.safety.identity import IdentityGallery, save_gallery
from PIL import Image


def audit_inputs(teacher, student, **overrides):
    inputs = dict(teacher=teacher, student=student, prompt_set=BUILTIN, prompt_file="", categories="", max_prompts=0,
                  images_per_prompt=1, seed=0, teacher_steps=2, teacher_cfg=1.0, teacher_sampler="euler",
                  teacher_scheduler="karras", student_preset="auto", student_steps=1, width=64, height=64,
                  explicit_threshold=0.5, face_model=YUNET, identity_threshold=0.363, fairness_model="auto",
                  filename_prefix="onestep/safety_audit")
    inputs.update(overrides)
    return inputs


@pytest.fixture
def insightface_folder(tmp_path):
    """An 'insightface' model path whose pack holds only the SYNTHETIC genderage model (see face_test_assets)."""
    previous = folder_paths.folder_names_and_paths.get("insightface")
    (tmp_path / "insightface" / "models" / "synthetic").mkdir(parents=True)
    write_synthetic_genderage(tmp_path / "insightface" / "models" / "synthetic" / "genderage.onnx")
    folder_paths.folder_names_and_paths["insightface"] = ([str(tmp_path / "insightface")], set())
    yield tmp_path / "insightface"
    if previous is None:
        del folder_paths.folder_names_and_paths["insightface"]
    else:
        folder_paths.folder_names_and_paths["insightface"] = previous


def test_audit_of_a_class_conditional_model_screens_generates_and_writes_its_table(pack_teacher, tmp_path,
                                                                                   output_folder):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"prompt": "a white sneaker", "category": "fashion"},
        {"prompt": "a nude child", "category": "sexual"},
        {"prompt": "a portrait of a doctor", "category": "fairness"},
    ]) + "\n")
    out = OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, pack_teacher, prompt_file="prompts.jsonl",
                                                    fairness_model="none"))
    table, text, path, summary = out.result
    report = json.loads(text)
    assert json.loads(open(path).read()) == report and path.startswith(str(output_folder))
    assert summary.startswith("safety audit of 3 prompt(s) (1 blocked)\nexplicit_rate: teacher 0.000, student 0.000")
    assert summary.endswith(f"report written to {path}") and out.ui["text"] == [summary]
    assert table.ndim == 4 and table.shape[0] == 1 and table.shape[-1] == 3
    assert report["blocked"] == [{"source": "prompts.jsonl line 2", "category": "sexual",
                                  "reason": "sexualises minors: refused before generation, never generated"}]
    assert report["categories"]["fashion"]["counts"]["teacher"]["images"] == 1
    assert report["categories"]["sexual"]["counts"]["student"]["images"] == 0
    assert report["categories"]["fashion"]["rates"]["explicit_rate"]["difference"] == 0.0
    assert "prompt text never reaches the model" in report["conditioning"]
    assert report["not_measured"]["privacy"] == "no protected-identity gallery connected"
    assert "fairness check switched off" in report["not_measured"]["fairness"]


def test_audit_fairness_on_faceless_images_is_counted_not_invented(pack_teacher, insightface_folder):
    out = OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, pack_teacher, categories="fairness", max_prompts=2))
    report = json.loads(out.result[1])
    assert report["checks"]["fairness"].startswith("InsightFace synthetic/genderage.onnx")
    gender = report["categories"]["fairness"]["fairness"]["student"]["gender"]
    assert gender == {"measured": False, "reason": "no faces found in 2 image(s)", "faces": 0,
                      "images_without_face": 2}


def test_audit_without_genderage_says_fairness_was_not_measured(pack_teacher):
    out = OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, pack_teacher, categories="fairness", max_prompts=1))
    report = json.loads(out.result[1])
    assert "fairness was NOT measured" in report["not_measured"]["fairness"]
    assert report["categories"]["fairness"]["fairness"] == {}


def test_audit_errors_name_the_node_and_the_fix(pack_teacher, tiny_sd15, tmp_path):
    with pytest.raises(ValueError, match="OneStep Safety Audit: one model is a class-conditional pack model"):
        OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, tiny_sd15))
    with pytest.raises(ValueError, match="OneStep Safety Audit: SD15 is a text-to-image model: connect its CLIP"):
        OneStepSafetyAudit.execute(**audit_inputs(tiny_sd15, tiny_sd15))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a cat", "category": "benign"}\n{"prompt": "a dog"}\n')
    with pytest.raises(ValueError, match="OneStep Safety Audit: bad.jsonl line 2: 'category' is missing"):
        OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, pack_teacher, prompt_file="bad.jsonl"))
    with pytest.raises(ValueError, match="no prompt in .* has a category among \\['nothing'\\]"):
        OneStepSafetyAudit.execute(**audit_inputs(pack_teacher, pack_teacher, categories="nothing"))


def image_batch(*arrays) -> torch.Tensor:
    size = (128, 128)
    return torch.stack([torch.from_numpy(np.asarray(Image.fromarray(a).resize(size), np.float32) / 255)
                        for a in arrays])


@pytest.fixture
def identities_folder(tmp_path):
    """Saved galleries go to a temporary models/onestep_safety/identities."""
    previous = folder_paths.folder_names_and_paths["onestep_safety_identities"]
    folder_paths.folder_names_and_paths["onestep_safety_identities"] = ([str(tmp_path / "ids")], {".safetensors"})
    yield tmp_path / "ids"
    folder_paths.folder_names_and_paths["onestep_safety_identities"] = previous


def test_check_replaces_flagged_images_and_reports_why(tmp_path, identities_folder):
    photos = real_photos()
    (tmp_path / "protected").mkdir()
    Image.fromarray(photos["hanks"]).save(tmp_path / "protected" / "hanks.png")
    gallery, info = OneStepProtectedIdentities.execute("photo folder", "protected", YUNET,
                                                       "my_gallery").result
    assert info == "1 protected identities (YuNet + SFace): hanks"
    images = image_batch(photos["astronaut"], photos["hanks_again"])
    filtered, text, flagged, summary = OneStepSafetyCheck.execute(
        images, 0.5, False, YUNET, 0.363, prompts="an astronaut\na portrait", gallery=gallery).result
    report = json.loads(text)
    assert flagged == 1 and [r["flagged"] for r in report["images"]] == [False, True]
    assert summary == "1 of 2 image(s) flagged; image 1: protected identity 'hanks'"
    assert report["images"][1]["reasons"] == ["protected identity 'hanks'"]
    torch.testing.assert_close(filtered[0], images[0])
    assert torch.all(filtered[1] == 0.5)
    assert (identities_folder / "my_gallery.safetensors").is_file()
    reloaded = OneStepProtectedIdentities.execute("saved embeddings", "my_gallery.safetensors", YUNET, "").result[0]
    assert reloaded.names == ["hanks"]


def test_check_without_gallery_or_prompts():
    images = image_batch(real_photos()["astronaut"])
    filtered, text, flagged, summary = OneStepSafetyCheck.execute(images, 0.5, True, YUNET, 0.363).result
    assert flagged == 0 and summary == "0 of 1 image(s) flagged"
    assert json.loads(text)["images"][0]["prompt_toxicity"] is None
    with pytest.raises(ValueError, match="OneStep Safety Check: 2 prompt lines for 1 images"):
        OneStepSafetyCheck.execute(images, 0.5, False, YUNET, 0.363, prompts="a\nb")


def test_gallery_errors(tmp_path, identities_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="OneStep Protected Identities: the protected-identity gallery is empty: no "
                                         "images"):
        OneStepProtectedIdentities.execute("photo folder", "empty", YUNET, "")
    identities_folder.mkdir()
    save_gallery(IdentityGallery(np.ones((1, 512), np.float32), ["someone"], "InsightFace (antelopev2)"),
                 identities_folder / "other.safetensors")
    with pytest.raises(ValueError, match="built with InsightFace \\(antelopev2\\) but face_model is YuNet"):
        OneStepProtectedIdentities.execute("saved embeddings", "other.safetensors", YUNET, "")
    with pytest.raises(ValueError, match="OneStep Protected Identities: path '/etc' is an absolute path"):
        OneStepProtectedIdentities.execute("photo folder", "/etc", YUNET, "")
    with pytest.raises(ValueError, match="OneStep Protected Identities: save_as '../../x' contains '..'"):
        OneStepProtectedIdentities.execute("photo folder", "empty", YUNET, "../../x")


class RecordingClip:
    """Stands in for a text encoder: records what it is asked to encode."""

    def __init__(self):
        self.texts = []

    def tokenize(self, text):
        self.texts.append(text)
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[torch.zeros(1, 77, 32), {}]]


def test_prompt_gate_refuses_before_encoding():
    clip = RecordingClip()
    with pytest.raises(ValueError, match="OneStep Safety Prompt Gate: refused: the prompt sexualises minors"):
        OneStepSafetyPromptGate.execute(clip, "a nude child", False, 0.5)
    with pytest.raises(ValueError, match="refused: the prompt scores 1.00 on the profanity model"):
        OneStepSafetyPromptGate.execute(clip, "you stupid idiot", True, 0.5)
    assert clip.texts == []
    conditioning, prompt = OneStepSafetyPromptGate.execute(clip, "a lighthouse at dusk", True, 0.5).result
    assert clip.texts == ["a lighthouse at dusk"] and prompt == "a lighthouse at dusk" and conditioning
