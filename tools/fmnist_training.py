"""Shared by the two Fashion-MNIST training scripts: flags, a budget clock, its learning-rate schedule, batches."""

import argparse
import math
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models" / "fmnist"


def common_args(description: str, minutes: float, batch: int, lr: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder with the four Fashion-MNIST idx .gz files")
    parser.add_argument("--minutes", type=float, default=minutes, help="training budget, in minutes of --clock")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time, so a shared machine does not shrink the training; wall")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr, help="peak Adam learning rate")
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the budget spent warming up")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (on a shared CPU, more threads than free cores stalls: keep 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def lr_factor(fraction: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of the budget, then a cosine decay to 0 at its end."""
    if fraction < warmup:
        return fraction / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (fraction - warmup) / (1 - warmup))))


class Budget:
    """Elapsed fraction of a budget in minutes of process CPU time or of wall-clock time."""

    def __init__(self, minutes: float, clock: str = "cpu"):
        self.seconds = minutes * 60
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        self.started, self.wall_started = self.clock(), time.perf_counter()

    def spent(self) -> float:
        """Seconds of the budget's clock used so far."""
        return self.clock() - self.started

    def wall(self) -> float:
        """Wall-clock seconds so far."""
        return time.perf_counter() - self.wall_started

    def fraction(self) -> float:
        return self.spent() / self.seconds


def random_batches(n: int, batch: int, generator: torch.Generator):
    """Endless index batches, reshuffled every epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            yield order[start : start + batch]
