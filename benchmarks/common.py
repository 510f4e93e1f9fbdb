"""Shared by the benchmark scripts: timing, the device description, and writing results of record."""

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
RESULTS_TABLE = BENCHMARKS_DIR / "RESULTS.md"
DRY_RUN_TABLE = "RESULTS.dry-run.md"
_dry_run_dir: Path | None = None


def add_dry_run_argument(parser) -> None:
    """``--dry-run DIR``: the script's own code path at tiny CPU settings; its JSON (marked ``"dry_run": true``) and
    table row go to DIR, never to results/ or RESULTS.md (tools/gpu_check.py --dry-run runs every benchmark so)."""
    parser.add_argument("--dry-run", metavar="DIR", type=Path, default=None,
                        help="tiny CPU run of the same code path; writes its marked result into DIR only")


def set_dry_run(folder: Path | None) -> None:
    """From now on write_result writes into ``folder`` (None: the results of record)."""
    global _dry_run_dir
    _dry_run_dir = None if folder is None else Path(folder)


def output_dir() -> Path:
    """Where this run's files go: the dry-run folder, else results/."""
    return _dry_run_dir if _dry_run_dir is not None else RESULTS_DIR


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64 (NaN anywhere gives NaN)."""
    value, reference = value.double(), reference.double()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function, device: torch.device) -> float:
    """Wall-clock seconds of one call, the device synchronised on both sides."""
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def interleaved_samples(functions: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call of each function, run in turn with the order reversed every other round (A B C, C B A,
    ...) so that drift and whatever the first call of a round pays (allocator, caches) hit all alike."""
    samples = {name: [] for name in functions}
    for round_index in range(repeats):
        names = list(functions) if round_index % 2 == 0 else list(reversed(functions))
        for name in names:
            samples[name].append(time_call(functions[name], device))
    return samples


def interleaved_medians(functions: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, timed by ``interleaved_samples``."""
    samples = interleaved_samples(functions, repeats, device)
    return {name: statistics.median(values) for name, values in samples.items()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(name: str, result: dict, command: str, summary: str) -> Path:
    """Write results/<name>.json and add a row to RESULTS.md (the table of record); after set_dry_run(DIR), write
    DIR/<name>.json marked ``"dry_run": true`` and the row to DIR/RESULTS.dry-run.md instead."""
    result = {**result, "command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": torch.__version__}
    if _dry_run_dir is not None:
        result["dry_run"] = True
        _dry_run_dir.mkdir(parents=True, exist_ok=True)
        path = _dry_run_dir / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        with (_dry_run_dir / DRY_RUN_TABLE).open("a") as table:
            table.write(f"| {result['date']} | `{name}` | {result['device']} | DRY RUN: {summary} | `{command}` |\n")
        return path
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    row = f"| {result['date']} | `{name}` | {result['device']} | {summary} | `{command}` |\n"
    if not RESULTS_TABLE.exists():
        RESULTS_TABLE.write_text(
            "# Benchmark results of record\n\nEach row: one run of a script in `benchmarks/`, with the exact command. "
            "Ratios are measured within one run; absolute times depend on the machine.\n\n"
            "| date | benchmark | device | result | command |\n|---|---|---|---|---|\n"
        )
    with RESULTS_TABLE.open("a") as table:
        table.write(row)
    return path
