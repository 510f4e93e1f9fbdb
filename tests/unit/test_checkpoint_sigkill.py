"""A process killed with SIGKILL in the middle of writing checkpoints leaves the latest one it finished loadable."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from onestep.distill.checkpoint import latest_checkpoint, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from pack_loader import load_pack
    load_pack()
    from onestep.distill.checkpoint import save_checkpoint
    weights = {"generator": {"w": torch.randn(2048, 2048)}, "fake_score": {"w": torch.randn(2048, 2048)}}
    step = 0
    while True:  # big enough that a kill lands mid-write most of the time
        step += 1
        weights["generator"]["w"].fill_(step)
        save_checkpoint(sys.argv[1], step, weights, {}, {"run": "kill-test"}, {"generator": [2048, 2048]},
                        extra={"step_value": step}, keep_last=2)
        print(step, flush=True)
""")


def test_sigkill_while_writing_keeps_the_previous_checkpoint_loadable(tmp_path):
    for attempt, delay in enumerate((0.05, 0.15, 0.3)):
        run_dir = tmp_path / f"run{attempt}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(REPO_ROOT / "tools")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            completed = int(writer.stdout.readline())  # one checkpoint is published...
            time.sleep(delay)  # ...and the next ones are being written when the kill lands
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
        latest = latest_checkpoint(run_dir)
        assert latest is not None
        loaded = load_checkpoint(latest, {"run": "kill-test"}, {"generator": [2048, 2048]})
        assert loaded.step >= completed
        assert float(loaded.weights["generator"]["w"][0, 0]) == loaded.step, "weights match the step they claim"
