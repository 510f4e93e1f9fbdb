"""`make demo`: distill the shipped Fashion-MNIST teacher into a one-step student inside a headless ComfyUI.

Runs workflows/onestep_distill_fmnist.json on a real ComfyUI server: SiD for 150 iterations (batch 32) on
the CPU, then the teacher at 35 NFE (EDM Heun) against the student at 1 NFE, with FD-FMNIST for both
(Fréchet distance on the shipped classifier's features; not FID) and a grid of samples.
"""

import sys
import time
from pathlib import Path

import comfy_host
from comfy_server import ComfyServer
from workflow_files import load_api_workflow

REPO_ROOT = comfy_host.REPO_ROOT
DEMO_DIR = REPO_ROOT / "demo_output"


def prepare_base_directory() -> Path:
    base = DEMO_DIR / "comfy_base"
    link = base / "custom_nodes" / "onestep"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def main() -> int:
    print(__doc__.strip().split("\n\n")[1], flush=True)
    base = prepare_base_directory()
    prompt = load_api_workflow("onestep_distill_fmnist")
    run_name = time.strftime("fmnist_sid_demo_%Y%m%d_%H%M%S")
    for node in prompt.values():
        if node["class_type"] == "OneStepDistillTrainer":
            node["inputs"]["run_name"] = run_name
        if node["class_type"] == "OneStepSaveStudent":
            node["inputs"]["overwrite"] = True  # each demo replaces the previous demo's student
    server = ComfyServer(comfy_host.COMFYUI_DIR, base, DEMO_DIR / "server.log")
    print(f"Starting ComfyUI (log: {server.log_path})...", flush=True)
    server.start()
    try:
        started = time.perf_counter()
        result = server.run_prompt(prompt, timeout_s=1800)
        if result["error"] is not None or result["status"] != 200:
            print(f"The workflow failed: {result['error'] or result['response']}", file=sys.stderr)
            return 1
        minutes = (time.perf_counter() - started) / 60
    finally:
        server.stop()
    outputs = result["history"]["outputs"]
    reports = [text for output in outputs.values() for text in output.get("text", [])]
    images = [base / "output" / image["subfolder"] / image["filename"]
              for output in outputs.values() for image in output.get("images", [])]
    print(f"\nIn-graph distillation finished in {minutes:.1f} min (CPU).")
    for report in reports:
        print(report)
    print("Images (teacher rows above student rows; the training curve):")
    for image in images:
        print(f"  {image}")
    print(f"Checkpoints: {base / 'output' / 'onestep_runs' / run_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
