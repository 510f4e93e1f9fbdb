"""`make demo`: run the shipped one-step workflow in a real, headless ComfyUI and print where the images are.

STAND-IN: no trained student can be downloaded here, so the demo builds a full-size SD1.5 checkpoint and
a SiD-LSG-style student UNet with random weights. ComfyUI's real loaders, detection, sampling and
decoding all run, but the pictures are noise. The distillation demo (a later issue) replaces this.
"""

import sys
import time
from pathlib import Path

import comfy_host
from comfy_server import ComfyServer
from random_models import ensure_random_sd15_files
from workflow_files import load_api_workflow

REPO_ROOT = comfy_host.REPO_ROOT
DEMO_DIR = REPO_ROOT / "demo_output"
DEMO_SIZE, DEMO_BATCH = 256, 4


def prepare_base_directory(cached: dict[str, Path]) -> Path:
    base = DEMO_DIR / "comfy_base"
    links = {
        base / "custom_nodes" / "onestep": REPO_ROOT,
        base / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors": cached["checkpoint"],
        base / "models" / "diffusion_models" / "sid_lsg_sd15_cfg1.5.safetensors": cached["unet"],
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return base


def main() -> int:
    print(__doc__.strip().split("\n\n")[1])
    comfy_host.import_comfy()
    print("Preparing random-weight SD1.5 files (first run only, about a minute)...", flush=True)
    cached = ensure_random_sd15_files(REPO_ROOT / ".cache" / "models")
    base = prepare_base_directory(cached)
    prompt = load_api_workflow("onestep_sid_lsg_sd15")
    for node in prompt.values():
        if node["class_type"] == "OneStepGenerate":
            node["inputs"].update(width=DEMO_SIZE, height=DEMO_SIZE, batch_size=DEMO_BATCH)
    server = ComfyServer(comfy_host.COMFYUI_DIR, base, DEMO_DIR / "server.log")
    print(f"Starting ComfyUI (log: {server.log_path})...", flush=True)
    server.start()
    try:
        started = time.perf_counter()
        result = server.run_prompt(prompt)
        if result["error"] is not None or result["status"] != 200:
            print(f"The workflow failed: {result['error'] or result['response']}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        images = [
            base / "output" / image["subfolder"] / image["filename"]
            for output in result["history"]["outputs"].values()
            for image in output.get("images", [])
        ]
    finally:
        server.stop()
    print(f"\nOne-step workflow 'workflows/onestep_sid_lsg_sd15.json': {len(images)} images of "
          f"{DEMO_SIZE}x{DEMO_SIZE} in {seconds:.1f} s (CPU, model loading included).")
    print("Images (random-weight stand-in student, so they show noise):")
    for image in images:
        print(f"  {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
