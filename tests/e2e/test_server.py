"""The pack inside a real ComfyUI server: registration, shipped workflows, bad input."""

import copy
import io
import shutil

import pytest
from onestep.nodes import NODES
from PIL import Image
from safetensors import safe_open
from workflow_files import PACK_FOLDER_NAME, load_api_workflow, load_ui_workflow

WORKFLOWS = ["onestep_distill_fmnist", "onestep_distill_sd15", "onestep_sid_lsg_sd15", "onestep_fast_sid_lsg_sd15",
             "onestep_teacher_vs_student_sd15",
             "onestep_sim_pixart",
             "onestep_safety_audit_fmnist", "onestep_safety_gated_sid_lsg_sd15",
             "onestep_pulid_sdxl", "onestep_pulid_one_step_student", "onestep_pulid_flux",
             "onestep_dmd2_sdxl", "onestep_fast_dmd2_sdxl", "onestep_pulid_dmd2_sdxl"]
TEST_SIZE = 64  # pixels: the random SD1.5 files are full size, the images are tiny so the CPU run is quick
TEACHER_TEST_STEPS = 3  # the shipped 25 cost ~3 minutes of full-size UNet calls on a 2-core CPU
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY_NODES = {"MarkdownNote", "Note"}  # never sent to the server
MISSING = object()


def shrink(prompt: dict) -> dict:
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] in ("OneStepGenerate", "EmptyLatentImage"):
            node["inputs"]["width"] = node["inputs"]["height"] = TEST_SIZE
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = TEACHER_TEST_STEPS
    return prompt


def node_id_of(prompt: dict, class_type: str) -> str:
    return next(key for key, node in prompt.items() if node["class_type"] == class_type)


def images_of(server, result) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)) for data in server.output_images(result["history"])]


def test_object_info_lists_every_node_with_a_tooltip_on_every_input_and_a_name_on_every_output(server):
    info = server.get_json("/object_info")
    for node in NODES:
        schema = node.GET_SCHEMA()
        node_id = schema.node_id
        assert node_id in info, f"{node_id} missing from /object_info"
        # hosts label an unnamed output differently (0.3.75 by its type, 0.28 by its id): name every one
        assert info[node_id]["output_name"] == [output.display_name for output in schema.outputs]
        assert all(schema_output.display_name for schema_output in schema.outputs), f"{node_id}: unnamed output"
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_template_browser_lists_the_shipped_workflows(server):
    templates = server.get_json("/workflow_templates")
    assert sorted(templates[PACK_FOLDER_NAME]) == sorted(WORKFLOWS)


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """What the frontend sends for a UI-format workflow: widget values mapped to input names in schema order."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES:
            continue
        schema = object_info[node["type"]]["input"]
        specs = {**schema.get("required", {}), **schema.get("optional", {})}
        order = object_info[node["type"]]["input_order"]
        linked = {entry["name"]: links[entry["link"]] for entry in node["inputs"] if entry["link"] is not None}
        values = iter(node["widgets_values"])
        inputs = {}
        optional = set(order.get("optional", []))
        for name in order.get("required", []) + order.get("optional", []):
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
                continue
            spec = specs[name]
            if not (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES):
                continue
            value = next(values, MISSING)
            if value is MISSING and name in optional:
                continue  # an optional widget added after the workflow was saved: the frontend keeps its default
            inputs[name] = value
            options = spec[1] if len(spec) > 1 else {}
            # the frontend's rule: a control_after_generate widget follows every INT input named seed / noise_seed
            if options.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
                assert next(values, None) in ("fixed", "increment", "decrement", "randomize"), f"{name}'s control"
        assert next(values, None) is None, f"{node['type']} has more widget values than widgets"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflows_load_as_their_api_twins(server, name):
    expected = {key: {"class_type": node["class_type"], "inputs": node["inputs"]}
                for key, node in load_api_workflow(name).items()}
    assert ui_to_api(load_ui_workflow(name), server.get_json("/object_info")) == expected


def test_sid_lsg_workflow_writes_an_image(server):
    result = server.run_prompt(shrink(load_api_workflow("onestep_sid_lsg_sd15")))
    assert result["error"] is None, result["error"]
    (image,) = images_of(server, result)
    assert image.size == (TEST_SIZE, TEST_SIZE)
    progress = [m for m in result["messages"] if m["type"] == "progress"]
    assert progress and progress[-1]["data"]["max"] == 1, "one step, reported through the progress bar"


def test_fast_path_workflow_matches_the_eager_workflow(server):
    eager = server.run_prompt(shrink(load_api_workflow("onestep_sid_lsg_sd15")))
    fast = server.run_prompt(shrink(load_api_workflow("onestep_fast_sid_lsg_sd15")))
    assert fast["error"] is None, fast["error"]
    (eager_image,), (fast_image,) = images_of(server, eager), images_of(server, fast)
    assert list(fast_image.getdata()) == list(eager_image.getdata()), "on the CPU the fast path runs eager"


def test_teacher_vs_student_workflow_writes_the_side_by_side(server):
    result = server.run_prompt(shrink(load_api_workflow("onestep_teacher_vs_student_sd15")))
    assert result["error"] is None, result["error"]
    (image,) = images_of(server, result)
    assert image.size == (2 * TEST_SIZE, TEST_SIZE)


def test_distillation_workflow_trains_saves_and_scores_a_student(server):
    prompt = load_api_workflow("onestep_distill_fmnist")
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "OneStepDistillConfig":
            inputs.update(iterations=4, batch_size=4, checkpoint_every=2, preview_every=2)
        if node["class_type"] == "OneStepFDFMNIST":
            inputs["samples_per_class"] = 3
    result = server.run_prompt(prompt)
    assert result["error"] is None, result["error"]
    curve, grid = sorted(images_of(server, result), key=lambda image: image.size)
    assert curve.size == (640, 320)
    assert grid.size == (4 * (10 * 29 + 1), 4 * (4 * 29 + 1)), "10 classes x (2 teacher + 2 student rows)"
    (report,) = result["history"]["outputs"][node_id_of(prompt, "OneStepFDFMNIST")]["text"]
    assert report.startswith("FD-FMNIST over 30 samples (not FID): teacher 35 NFE ")
    assert result["history"]["outputs"][node_id_of(prompt, "PreviewAny")]["text"] == [report], "shown on the canvas"
    previews = [m for m in result["messages"] if m["type"] == "progress" and m["data"]["max"] == 4]
    assert previews and previews[-1]["data"]["value"] == 4
    assert (server.base_dir / "models" / "onestep" / "fmnist_sid_student.safetensors").is_file()


def test_sim_pixart_graph_validates(server):
    """Only validation: the SIM workflow needs a real T5-XXL (4.7B parameters) that cannot be fabricated here."""
    prompt = shrink(load_api_workflow("onestep_sim_pixart"))
    result = server.run_prompt(prompt)
    assert result["status"] == 200, result["response"]
    assert result["response"]["node_errors"] == {}
    assert result["error"]["node_type"] in {"OneStepLoadStudent", "CLIPLoader", "VAELoader"}, (
        "the graph validated and failed only where the placeholder weights are read"
    )


def test_sd15_distillation_workflow_trains_a_lora_student_and_samples_it(server):
    """The shipped SD1.5 workflow with its settings (SiD-LSG 1.5, gradient checkpointing, fused AdamW, LoRA 64) on
    the full-size random SD1.5 checkpoint, shortened to one iteration of one micro-batch at 64 px, in float32
    (bf16 autocast is emulated on CPUs without bf16 units, ~10x slower). LoRA students share the teacher's
    weights, so the run fits the CI machine."""
    prompt = load_api_workflow("onestep_distill_sd15")
    config = prompt[node_id_of(prompt, "OneStepDistillConfig")]["inputs"]
    assert (config["lora_rank"], config["precision"], config["gradient_checkpointing"]) == (64, "bf16", True)
    config.update(iterations=1, width=TEST_SIZE, height=TEST_SIZE, grad_accumulation=1, preview_every=1,
                  precision="fp32")
    prompt[node_id_of(prompt, "OneStepGenerate")]["inputs"].update(width=TEST_SIZE, height=TEST_SIZE)
    result = server.run_prompt(prompt)
    assert result["error"] is None, result["error"]
    curve, image = sorted(images_of(server, result), key=lambda image: -image.width)
    assert curve.size == (640, 320) and image.size == (TEST_SIZE, TEST_SIZE)
    assert any(m["type"] == "progress" and m["data"]["max"] == 1 for m in result["messages"])
    (student,) = (server.base_dir / "models").glob("*/sd15_sid_lsg_student.safetensors")  # unet/ or diffusion_models/
    with safe_open(str(student), "pt") as saved:
        assert not any(".lora_" in key for key in saved.keys()), "the adapters are merged into plain UNet keys"
        assert saved.metadata()["onestep.preset"] == '"sid-lsg"'
    run_dir = server.base_dir / "output" / "onestep_runs" / "sd15_sid_lsg"
    checkpoint = next(run_dir.glob("step_*"))
    unet_float32_bytes = 4 * 859_520_964
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < unet_float32_bytes, "adapters and Adam state only"
    student.unlink()  # 3.4 GB and 1.8 GB that the session's server folder would otherwise keep: CI shares its disk
    shutil.rmtree(run_dir)


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving(server):
    good = shrink(load_api_workflow("onestep_sid_lsg_sd15"))
    generate_id = node_id_of(good, "OneStepGenerate")
    student_id = node_id_of(good, "OneStepLoadStudent")

    zero_batch = copy.deepcopy(good)
    zero_batch[generate_id]["inputs"]["batch_size"] = 0
    result = server.run_prompt(zero_batch)
    assert result["status"] == 400
    assert "batch_size" in str(result["response"]["node_errors"][generate_id])

    pickle_student = copy.deepcopy(good)
    pickle_student[student_id]["inputs"]["student_name"] = "not_a_student.ckpt"
    result = server.run_prompt(pickle_student)
    assert result["status"] == 400, "refused when queued, before the big checkpoint loads"
    message = str(result["response"]["node_errors"][student_id])
    assert "'not_a_student.ckpt' is not a safetensors file" in message
    assert "convert_student.py --allow-pickle" in message

    missing_student = copy.deepcopy(good)
    missing_student[student_id]["inputs"]["student_name"] = "no_such_student.safetensors"
    result = server.run_prompt(missing_student)
    assert result["status"] == 400
    message = str(result["response"]["node_errors"][student_id])
    assert "OneStep Load Student: 'no_such_student.safetensors' is not among the files" in message
    assert "diffusion_models" in message and "sid_lsg_sd15_cfg1.5.safetensors" in message

    pixart_preset = copy.deepcopy(good)
    pixart_preset[generate_id]["inputs"]["preset"] = "sim-pixart"
    result = server.run_prompt(pixart_preset)
    assert "OneStep Generate: preset 'sim-pixart' is for SIM-DiT" in result["error"]["exception_message"]

    sigma_too_high = copy.deepcopy(good)
    sigma_too_high[generate_id]["inputs"].update(preset="custom-sigma", custom_value=500.0)
    result = server.run_prompt(sigma_too_high)
    assert "sigma 500, outside this model's range" in result["error"]["exception_message"]

    assert server.process.poll() is None
    result = server.run_prompt(good)
    assert result["error"] is None
    assert len(images_of(server, result)) == 1
