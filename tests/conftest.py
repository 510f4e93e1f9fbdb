"""Load the repository root as the package ``onestep``, whatever the clone's folder is called.

ComfyUI imports the pack under its folder name; the tests need one fixed name so that the
pack's relative imports resolve the same way everywhere.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

_loader_path = Path(__file__).resolve().parents[1] / "tools" / "pack_loader.py"
_spec = importlib.util.spec_from_file_location("_onestep_pack_loader", _loader_path)
_pack_loader = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pack_loader)
_pack_loader.load_pack()

# Helpers shared by the tiers and the tools (comfy_host, comfy_server, random_models) import by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def pytest_report_header(config):
    """Say the free disk up front: a first run writes ~6 GB of random model files, and a full disk otherwise
    shows up as dozens of fixture errors."""
    free_gib = shutil.disk_usage(Path(__file__).resolve().parents[1]).free / 2**30
    return f"onestep: {free_gib:.1f} GiB free beside the clone (a first run caches ~6 GB under .cache/models)"


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors run fastest on one thread (and do not stall on a busy CPU); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
