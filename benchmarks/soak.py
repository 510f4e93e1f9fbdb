"""Soak: queue 200 one-step prompts into one real ComfyUI server and watch completion, throughput and the server's
resident memory.

    python benchmarks/soak.py                 # 200 prompts, the shipped Fashion-MNIST teacher in one step (28 px)
    python benchmarks/soak.py --prompts 50    # shorter; writes nothing unless --write

Each prompt is OneStep Load Pack Model -> OneStep Class Label -> OneStep Generate (one network evaluation) ->
OneStep Pixels To Image -> SaveImage, with its own seed and class, so every prompt executes the generator (ComfyUI's
cache cannot skip it). The server's VmRSS is read from /proc after every prompt. ``rss_growth_ratio`` is the
resident memory after the last prompt over that after prompt 20 (the first prompts load the model and warm the
allocator). At the end the first prompts are queued again: their images must be identical (``deterministic``).
Writes results/soak.json and a row in RESULTS.md.
"""

import argparse
import io
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402
from comfy_server import ComfyServer  # noqa: E402
from workflow_files import PACK_FOLDER_NAME  # noqa: E402

BASELINE_PROMPT = 20
REPEATED = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200, help="prompts to queue (default 200)")
    parser.add_argument("--write", action="store_true", help="write results even for a run other than 200 prompts")
    return parser.parse_args()


def one_step_prompt(index: int) -> dict:
    return {
        "1": {"class_type": "OneStepLoadPackModel", "inputs": {"model_name": "teacher.safetensors"}},
        "2": {"class_type": "OneStepClassLabel", "inputs": {"class_label": index % 10}},
        "3": {"class_type": "OneStepGenerate",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "seed": 1000 + index, "batch_size": 1, "width": 28,
                         "height": 28, "preset": "auto", "steps": 1, "custom_value": 2.5}},
        "4": {"class_type": "OneStepPixelsToImage", "inputs": {"samples": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"soak/p{index:04d}"}},
    }


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def pixels(server: ComfyServer, result: dict) -> bytes:
    from PIL import Image

    (image,) = server.output_images(result["history"])
    return Image.open(io.BytesIO(image)).tobytes()


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="onestep_soak_") as folder:
        base = Path(folder)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(comfy_host.REPO_ROOT, target_is_directory=True)
        server = ComfyServer(comfy_host.COMFYUI_DIR, base, base / "server.log").start()
        try:
            pid = server.process.pid
            samples, failures, first_images = [], [], {}
            started = time.perf_counter()
            for index in range(1, args.prompts + 1):
                result = server.run_prompt(one_step_prompt(index), timeout_s=300)
                if result["status"] != 200 or result["error"] is not None:
                    failures.append({"prompt": index, "error": result["error"] or result["response"]})
                elif index <= REPEATED:
                    first_images[index] = pixels(server, result)
                samples.append({"prompt": index, "rss_kb": resident_kb(pid),
                                "seconds": round(time.perf_counter() - started, 3)})
            elapsed = time.perf_counter() - started
            repeated = {index: pixels(server, server.run_prompt(one_step_prompt(index) | {
                "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "soak/again"}}}))
                for index in first_images}
            alive = server.process.poll() is None
        finally:
            server.stop()
    completed = args.prompts - len(failures)
    by_prompt = {sample["prompt"]: sample["rss_kb"] for sample in samples}
    baseline = by_prompt.get(min(BASELINE_PROMPT, args.prompts))
    growth = by_prompt[args.prompts] / baseline
    result = {
        "prompts": args.prompts, "completed": completed, "failures": failures[:10],
        "prompts_per_min": round(60 * args.prompts / elapsed, 1), "seconds": round(elapsed, 1),
        "rss_kb": samples, "rss_baseline_prompt": min(BASELINE_PROMPT, args.prompts),
        "rss_growth_ratio": round(growth, 4), "deterministic": all(repeated[i] == first_images[i] for i in repeated),
        "server_alive_after": alive, "workload": "OneStep Generate, shipped Fashion-MNIST teacher, 1 step, 28 px",
        "device": f"CPU, ComfyUI --cpu (load average {Path('/proc/loadavg').read_text().split()[0]})",
    }
    print(f"{completed}/{args.prompts} completed, {result['prompts_per_min']} prompts/min, RSS "
          f"{baseline} kB after prompt {result['rss_baseline_prompt']} -> {by_prompt[args.prompts]} kB after prompt "
          f"{args.prompts} (x{growth:.4f}), deterministic: {result['deterministic']}")
    if args.prompts == 200 or args.write:
        from common import write_result

        command = "python benchmarks/soak.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
        summary = (f"{completed}/{args.prompts} one-step prompts completed, {result['prompts_per_min']} prompts/min, "
                   f"RSS growth x{growth:.4f} from prompt {result['rss_baseline_prompt']} to {args.prompts} "
                   f"({baseline} -> {by_prompt[args.prompts]} kB), repeated images identical: "
                   f"{result['deterministic']} ({result['workload']})")
        write_result("soak", result, command, summary)
    return 0 if completed == args.prompts and growth < 1.05 and result["deterministic"] else 1


if __name__ == "__main__":
    sys.exit(main())
