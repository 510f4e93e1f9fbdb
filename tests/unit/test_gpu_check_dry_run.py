"""tools/gpu_check.py --dry-run: every step of the GPU check (install from a carry folder, the GPU tier, each
benchmark) runs on the CPU at tiny sizes, so the script cannot rot between the rare runs on a GPU machine; its
results are marked and never touch the results of record. And the GPU tier fails, never skips, without CUDA."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import gpu_check

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = ["gpu-tier", "P1-graphs", "P1", "P3-lora", "P3", "P5", "P2", "P4"]


def records() -> dict:
    """benchmarks/results and RESULTS.md as they are: a dry run must leave them so."""
    files = [*sorted((REPO_ROOT / "benchmarks" / "results").glob("*")), REPO_ROOT / "benchmarks" / "RESULTS.md"]
    return {file.name: (file.stat().st_mtime_ns, file.read_bytes()) for file in files}


def test_the_dry_run_passes_every_step_and_leaves_the_records_alone(tmp_path):
    before = records()
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert records() == before, "a dry run wrote to benchmarks/results or RESULTS.md"

    summary = (out / "summary.txt").read_text()
    assert done.stdout.rstrip().endswith(summary.rstrip()), "the summary is printed last"
    assert "RESULT: every step passed" in summary and "DRY RUN" in summary.splitlines()[0]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["ok"]
    assert report["install"]["comfyui"] == "0.3.75" and report["install"]["wheels"] == [gpu_check.PROBE_WHEEL]
    assert list(report["steps"]) == STEPS
    assert all(step["status"] == "ok" for step in report["steps"].values()), report["steps"]
    assert report["steps"]["gpu-tier"]["line"].startswith("8 passed")
    for name in STEPS[1:]:
        result = report["steps"][name]["result"]
        assert result["dry_run"] is True and result["device"].startswith("CPU"), name
    assert len(report["goals"]) == 7 and all("DRY RUN" in line and "MET" not in line for line in report["goals"])
    p3 = next(line for line in report["goals"] if line.startswith("P3 "))
    assert "bf16 autocast with float32 weights, gradient checkpointing on, full fine-tuning, fused AdamW, EMA" in p3

    assert sorted(path.name for path in out.iterdir()) == ["RESULTS.new-rows.md", "gpu_check.json", "gpu_check.log",
                                                           "results.tar.gz", "summary.txt"]  # the device tool takes 8
    rows = (out / "RESULTS.new-rows.md").read_text().splitlines()
    assert len(rows) == 7 and all("DRY RUN" in row for row in rows)  # one per benchmark step
    with tarfile.open(out / "results.tar.gz") as archive:
        names = archive.getnames()
    assert "gpu-check/junit-gpu.xml" in names and "dry-results/fast_path.json" in names
    assert not [name for name in names if name.startswith("benchmarks/")], "a dry run packs no record"


def test_without_cuda_the_gpu_tier_fails_instead_of_skipping(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("ONESTEP_GPU_DRY_RUN", None)
    junit = tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu/test_fsdp_cuda.py", "-q", "--junitxml",
                           str(junit)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "tests/gpu needs CUDA and torch.cuda.is_available() is False" in done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout
    # the GPU check's summary names it
    assert gpu_check.failed_tests(junit) == ["test_fsdp_cuda::test_fsdp2_over_nccl_trains_like_the_unsharded_network"]


def test_a_step_that_does_not_fit_the_budget_is_skipped_and_said(tmp_path):
    log = gpu_check.Log(tmp_path / "log")
    step = gpu_check.Step("P9", [sys.executable, "-c", "raise SystemExit(3)"], cap_s=30, min_s=20)
    gpu_check.run_step(step, gpu_check.Budget(25.0), {**os.environ}, log, tmp_path, dry=True, leave_s=40)
    assert step.status == "skipped" and "out of time" in step.line  # 25 s minus the summary's 10 s < 20 s
    gpu_check.run_step(step, gpu_check.Budget(33.0), {**os.environ}, log, tmp_path, dry=True, leave_s=40)
    assert step.status == "failed" and step.line.startswith("exit 3")  # it takes what it would have left the next
    slow = gpu_check.Step("P8", [sys.executable, "-c", "import time; time.sleep(60)"], cap_s=2, min_s=1)
    gpu_check.run_step(slow, gpu_check.Budget(100.0), {**os.environ}, log, tmp_path, dry=True)
    assert slow.status == "timed out" and slow.seconds < 10


def test_p4_trains_for_the_minutes_left():
    assert gpu_check.p4_minutes(100, dry=False) == 0.8
    assert gpu_check.p4_minutes(1000, dry=False) == 3.0  # the benchmark's full GPU scale
    assert gpu_check.p4_minutes(60, dry=False) == 0.25


def test_each_goal_is_judged_against_its_target():
    steps = {name: gpu_check.Step(name, [], 1, 1, status="ok") for name in STEPS}
    fast = dict(fast_ms=10.5, eager_ms=44.0, unet_ms=5.0, vae_ms=5.5, compile_s=70.0, compile=True, strategy="auto",
                matches_eager=True)
    steps["P1"].data["result"] = fast
    steps["P1-graphs"].data["result"] = {**fast, "fast_ms": 31.0, "compile": False}
    steps["P2"].data["result"] = dict(overhead_ratio=1.02, speedup_vs_25step_cfg=23.0, model="SD1.5-size UNet",
                                      image_size=512, batch=1)
    steps["P3"].data["result"] = dict(s_per_it=0.45, peak_gb=36.2, setting="batch 8, full fine-tuning")
    steps["P3-lora"].data["result"] = dict(s_per_it=0.55, peak_gb=12.0, setting="batch 8, LoRA rank 64")
    steps["P4"].data["result"] = dict(sid_fd_1nfe=1.2, teacher_fd_35nfe=1.36, minutes=2.0, batch=256)
    steps["P5"].data["result"] = dict(overhead_ratio=1.2, model="SDXL-size UNet", size=1024, plain_step_ms=95,
                                      pulid_step_ms=114)
    lines = {line.split(" ")[0] + (" graphs" if "compile off" in line else ""): line
             for line in gpu_check.goals(steps, dry=False)}
    assert lines["P1"].endswith("vs <= 12 ms: MET")
    assert lines["P1 graphs"].endswith("vs <= 12 ms: MISSED")
    assert lines["P2"].endswith("figure only")
    assert lines["P3"].endswith("MISSED") and "36.2 GiB" in lines["P3"]  # fast enough, too much memory
    assert lines["P3-lora"].endswith("MET") and "LoRA rank 64" in lines["P3-lora"]
    assert lines["P4"].endswith("MET")
    assert lines["P5"].endswith("MISSED")
    fast["matches_eager"] = False  # fast but wrong is no result
    assert gpu_check.goals(steps, dry=False)[0].endswith("MISSED")
