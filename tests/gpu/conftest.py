"""The GPU tier: the pack's CUDA paths at real sizes (SD1.5- and SDXL-size UNets, fp16 / bf16, NCCL).

    python -m pytest tests/gpu                        # on a CUDA machine (tools/gpu_check.py runs it so)
    ONESTEP_GPU_DRY_RUN=1 python -m pytest tests/gpu  # the same tests on the CPU at tiny sizes (gpu_check --dry-run)

Asked to run without CUDA and without the dry-run switch, every test FAILS (never skips): a GPU check that ran on a
machine without a GPU must not look green. `make test` runs the dry mode through tools/gpu_check.py --dry-run.
"""

import gc
import os
import sys
from pathlib import Path

import comfy_host
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_helpers
DRY_RUN = os.environ.get("ONESTEP_GPU_DRY_RUN") == "1"
comfy_host.import_comfy(cpu=DRY_RUN or not torch.cuda.is_available())


class Scale:
    """Sizes and dtypes of one mode: real on the GPU, tiny on the CPU dry run (the same code paths)."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.dtype = torch.float32 if dry else torch.float16  # what ComfyUI loads a UNet in on a GPU
        self.image_size = 32 if dry else 512  # SD1.5 tests
        self.sdxl_size = 64 if dry else 1024  # PuLID test
        self.strategy = "static-eager" if dry else "auto"  # the graph's buffer protocol without a graph on the CPU
        self.train_size = 32 if dry else 256
        self.train_batch = 2 if dry else 4

    def describe(self) -> str:
        return "dry run: CPU, tiny models" if self.dry else f"CUDA: {torch.cuda.get_device_name()}"


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale(DRY_RUN)


@pytest.fixture(scope="session", autouse=True)
def cuda_or_dry_run():
    """Fail every test of this tier on a machine without CUDA unless the dry run was asked for."""
    if not DRY_RUN and not torch.cuda.is_available():
        pytest.fail("tests/gpu needs CUDA and torch.cuda.is_available() is False; set ONESTEP_GPU_DRY_RUN=1 for "
                    "the tiny CPU run (tools/gpu_check.py --dry-run)", pytrace=False)
    yield


def pytest_report_header(config):
    if DRY_RUN:
        return "onestep GPU tier: DRY RUN on the CPU (tiny models); no GPU figure comes from this run"
    if torch.cuda.is_available():
        return f"onestep GPU tier on {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return "onestep GPU tier: NO CUDA DEVICE; every test will fail"


@pytest.fixture(autouse=True, scope="module")
def release_memory():
    """Each module starts from an empty GPU: ComfyUI's loaded models unloaded, the allocator's cache emptied."""
    yield
    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()


@pytest.fixture(scope="session")
def sd15_unet(scale):
    """A ComfyUI MODEL: a random SD1.5-size UNet loaded as ComfyUI loads one (fp16 on a GPU); dry: the tests' tiny
    SD1.5-structured UNet."""
    import comfy.sd
    import comfy.supported_models
    from random_models import random_sd15_unet_state_dict

    if scale.dry:
        return comfy_host.tiny_model_patcher(comfy.supported_models.SD15)
    return comfy.sd.load_diffusion_model_state_dict(random_sd15_unet_state_dict(), model_options={"dtype": scale.dtype})


@pytest.fixture(scope="session")
def context_dim(sd15_unet) -> int:
    return sd15_unet.model.model_config.unet_config["context_dim"]


@pytest.fixture(autouse=True)
def output_folder(tmp_path):
    """ComfyUI writes run folders into this test's own temporary folder."""
    with comfy_host.comfy_folder("output", tmp_path):
        yield tmp_path
