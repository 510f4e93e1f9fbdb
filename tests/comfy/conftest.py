import sys
from pathlib import Path

import comfy_host
import pytest
import torch

comfy_host.import_comfy()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # trainer_helpers


@pytest.fixture(name="comfy_host", scope="session")
def comfy_host_fixture():
    return comfy_host


@pytest.fixture
def tiny_sd15():
    import comfy.supported_models

    return comfy_host.tiny_model_patcher(comfy.supported_models.SD15)


@pytest.fixture(autouse=True)
def output_folder(tmp_path):
    """Every test writes ComfyUI outputs (run folders, jobs) into its own temporary folder."""
    with comfy_host.comfy_folder("output", tmp_path):
        yield tmp_path


@pytest.fixture(autouse=True)
def input_folder(tmp_path):
    """ComfyUI's input folder is the test's temporary folder: the nodes read files only from inside it."""
    with comfy_host.comfy_folder("input", tmp_path):
        yield tmp_path


@pytest.fixture
def model_folder():
    """register(kind, path, is_default=False): a temporary model folder known to ComfyUI for this test only."""
    import folder_paths

    added = []

    def register(kind: str, path, is_default: bool = False) -> None:
        folder_paths.add_model_folder_path(kind, str(path), is_default=is_default)
        added.append((kind, str(path)))

    yield register
    for kind, path in added:
        folder_paths.folder_names_and_paths[kind][0].remove(path)


@pytest.fixture(autouse=True)
def fresh_file_lists():
    """Drop ComfyUI's file-list cache after each test: an entry for a temporary folder deleted after its test makes
    every later listing of that kind raise FileNotFoundError (folder_paths checks the cached folders' mtimes)."""
    import folder_paths

    yield
    folder_paths.filename_list_cache.clear()


@pytest.fixture(scope="module")
def tiny_edm_network():
    """A small random class-conditional EDM network (its zero-initialised output layers perturbed, so F shows)."""
    from onestep.distill.networks import EDMDenoiser

    torch.manual_seed(0)
    network = EDMDenoiser(channels=(8, 16), blocks=1, emb_dim=16).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


@pytest.fixture(scope="module")
def pack_teacher(tiny_edm_network):
    """The tiny EDM network as a ComfyUI MODEL."""
    from onestep.nodes.pack_models import edm_model_patcher

    return edm_model_patcher(tiny_edm_network)
