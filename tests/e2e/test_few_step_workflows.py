"""The DMD2 SDXL workflows through the real server.

As shipped, they name sd_xl_base_1.0 and DMD2's 1-step UNet, which exist here only as placeholders: the server
validates the whole graphs and stops where those are read. Then they run end to end on random SDXL-structured files
(tools/random_models.py: SDXL's blocks, 70 cross-attentions over 2048-d text and the 2816-d size embedding, at one
width, which ComfyUI detects and samples as SDXL): the checkpoint's text encoders and VAE, a UNet named like DMD2's
release and, for PuLID, official-size PuLID v1.1 whose 70 ID projections are as wide as that network's
cross-attentions (SDXL's full widths would need its 2.6B-parameter UNet, 10 GB in float32 on this CPU).
"""

import io
import json
from urllib.parse import urlencode

import pytest
import torch
from PIL import Image
from safetensors.torch import load
from server_base import RANDOM_SDXL_FILES
from workflow_files import load_api_workflow

TEST_SIZE = 64  # pixels, as test_server.py: tiny images keep the CPU run short

DMD2_WORKFLOWS = ["onestep_dmd2_sdxl", "onestep_fast_dmd2_sdxl", "onestep_pulid_dmd2_sdxl"]
RANDOM_CHECKPOINT, RANDOM_DMD2, RANDOM_PULID = (path.split("/", 1)[1] for path in RANDOM_SDXL_FILES)


@pytest.mark.parametrize("name", DMD2_WORKFLOWS)
def test_dmd2_workflows_validate_and_stop_at_the_missing_weights(server, name):
    result = server.run_prompt(load_api_workflow(name))
    assert result["status"] == 200, result["response"]
    assert result["response"]["node_errors"] == {}
    assert result["error"]["node_type"] in {"CheckpointLoaderSimple", "OneStepLoadStudent", "OneStepPuLIDModelLoader",
                                            "OneStepPuLIDEvaClipLoader", "OneStepPuLIDFaceAnalysisLoader"}


def images_of(server, result) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)) for data in server.output_images(result["history"])]


def on_random_files(name: str) -> dict:
    """The shipped workflow at TEST_SIZE, pointed at the random SDXL-structured checkpoint, DMD2-named UNet and
    PuLID file."""
    prompt = load_api_workflow(name)
    for node in prompt.values():
        if node["class_type"] == "OneStepGenerate":
            node["inputs"]["width"] = node["inputs"]["height"] = TEST_SIZE
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = RANDOM_CHECKPOINT
        if node["class_type"] == "OneStepLoadStudent":
            node["inputs"]["student_name"] = RANDOM_DMD2
        if node["class_type"] == "OneStepPuLIDModelLoader":
            node["inputs"]["pulid_file"] = RANDOM_PULID
    return prompt


def test_dmd2_one_step_workflow_runs_end_to_end(server):
    result = server.run_prompt(on_random_files("onestep_dmd2_sdxl"))
    assert result["error"] is None, result["error"]
    (image,) = images_of(server, result)
    assert image.size == (TEST_SIZE, TEST_SIZE)
    progress = [m for m in result["messages"] if m["type"] == "progress"]
    assert progress and progress[-1]["data"]["max"] == 1, "one step"


def test_dmd2_fast_path_workflow_matches_the_plain_one(server):
    plain = server.run_prompt(on_random_files("onestep_dmd2_sdxl"))
    fast = server.run_prompt(on_random_files("onestep_fast_dmd2_sdxl"))
    assert fast["error"] is None, fast["error"]
    (plain_image,), (fast_image,) = images_of(server, plain), images_of(server, fast)
    assert list(fast_image.getdata()) == list(plain_image.getdata()), "on the CPU the fast path runs eager"


def test_auto_reads_the_dmd2_preset_from_the_file_name(server):
    prompt = on_random_files("onestep_dmd2_sdxl")
    generate = next(node for node in prompt.values() if node["class_type"] == "OneStepGenerate")
    generate["inputs"]["preset"] = "auto"
    auto = server.run_prompt(prompt)
    named = server.run_prompt(on_random_files("onestep_dmd2_sdxl"))
    assert auto["error"] is None, auto["error"]
    assert list(images_of(server, auto)[0].getdata()) == list(images_of(server, named)[0].getdata())


def test_a_four_step_preset_with_one_step_is_refused_by_name(server):
    prompt = on_random_files("onestep_dmd2_sdxl")
    generate = next(node for node in prompt.values() if node["class_type"] == "OneStepGenerate")
    generate["inputs"]["preset"] = "dmd2-sdxl-4step"
    message = server.run_prompt(prompt)["error"]["exception_message"]
    assert "preset 'dmd2-sdxl-4step'" in message and "Set steps to 4" in message and "dmd2-sdxl-1step" in message


def test_pulid_on_the_dmd2_student_runs_end_to_end(server):
    """The shipped graph: the reference photo parsed and embedded, the identity applied to DMD2's one step, and ID
    Similarity reporting on the image. The identity moves the step's latent (against the same graph without Apply
    PuLID) by the order a new prompt does: on random weights both are small (7e-5 and 1.5e-4 here; the random VAE
    decodes nearly every latent to the same gray), a new seed moves it by ~40."""
    prompt = with_saved_latent(on_random_files("onestep_pulid_dmd2_sdxl"))
    result = server.run_prompt(prompt)
    assert result["error"] is None, result["error"]
    (image,) = images_of(server, result)
    assert image.size == (TEST_SIZE, TEST_SIZE)
    assert [m for m in result["messages"] if m["type"] == "progress" and m["data"]["max"] == 1], "one step"
    (report,) = [json.loads(node["text"][0]) for node in result["history"]["outputs"].values() if "text" in node]
    assert report["images"] == 1

    apply_id = next(key for key, node in prompt.items() if node["class_type"] == "OneStepApplyPuLID")
    generate = next(node for node in prompt.values() if node["class_type"] == "OneStepGenerate")
    assert generate["inputs"]["model"] == [apply_id, 0]
    generate["inputs"]["model"] = prompt[apply_id]["inputs"]["model"]
    without_identity = saved_latent(server, server.run_prompt(prompt))
    text = next(node for node in prompt.values() if node["class_type"] == "CLIPTextEncode")
    text["inputs"]["text"] = "a cat"
    other_prompt = saved_latent(server, server.run_prompt(prompt))
    identity_effect = float((saved_latent(server, result) - without_identity).abs().max())
    prompt_effect = float((other_prompt - without_identity).abs().max())
    assert identity_effect > 0.1 * prompt_effect > 0, (identity_effect, prompt_effect)


def with_saved_latent(prompt: dict) -> dict:
    generate_id = next(key for key, node in prompt.items() if node["class_type"] == "OneStepGenerate")
    return {**prompt, "latent": {"class_type": "SaveLatent",
                                 "inputs": {"samples": [generate_id, 0], "filename_prefix": "onestep_test/latent"}}}


def saved_latent(server, result) -> torch.Tensor:
    (file,) = result["history"]["outputs"]["latent"]["latents"]
    return load(server.get_bytes("/view?" + urlencode(file)))["latent_tensor"]
