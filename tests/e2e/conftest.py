"""One real ComfyUI server for the e2e tier, with the pack linked under an awkward folder name."""

import shutil
from importlib.util import find_spec
from pathlib import Path

import comfy_host
import pytest
from comfy_server import ComfyServer
from face_test_assets import assemble_insightface_pack
from random_models import ensure_random_pulid_files, ensure_random_sd15_files
from workflow_files import PACK_FOLDER_NAME

comfy_host.import_comfy()  # the tests import the pack's node list, and the random files need comfy's modules
REPO_ROOT = comfy_host.REPO_ROOT
MODEL_CACHE = REPO_ROOT / ".cache" / "models"

# Files the shipped workflows name, and what the e2e tier puts there.
RANDOM_SD15_FILES = {
    "checkpoints/v1-5-pruned-emaonly.safetensors": "checkpoint",
    "diffusion_models/sid_lsg_sd15_cfg1.5.safetensors": "unet",
}
# The SIM workflow needs a 4.7B-parameter T5-XXL: too large to fabricate here, so these names exist only
# for the server's validation of the graph (see test_workflows.py).
PLACEHOLDER_FILES = [
    "diffusion_models/sim_dit_600m.safetensors",
    "text_encoders/t5xxl_fp16.safetensors",
    "vae/sd-vae-ft-ema.safetensors",
    # PuLID: the SDXL / FLUX bases and PuLID FLUX are 1-24 GB each (see test_pulid_workflows.py)
    "checkpoints/sd_xl_base_1.0.safetensors",
    "diffusion_models/sdxl_one_step_student.safetensors",
    "diffusion_models/flux1-dev.safetensors",
    "text_encoders/clip_l.safetensors",
    "vae/ae.safetensors",
    "pulid/pulid_flux_v0.9.1.safetensors",
]
# Official-size PuLID v1.1 and EVA-CLIP with random weights, under the names the workflows use.
RANDOM_PULID_FILES = {"pulid/pulid_v1.1.safetensors": "pulid", "clip_vision/EVA02_CLIP_L_336_psz14_s6B.pt": "eva_clip"}
REFERENCE_PHOTO = Path(find_spec("skimage").origin).parent / "data" / "astronaut.png"


def write_placeholder_safetensors(path: Path) -> None:
    header = b'{"__metadata__":{"onestep.placeholder":"true"}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    cached = ensure_random_sd15_files(MODEL_CACHE)
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for relative, kind in RANDOM_SD15_FILES.items():
        (base / "models" / relative).parent.mkdir(parents=True, exist_ok=True)
        (base / "models" / relative).symlink_to(cached[kind])
    pulid_files = ensure_random_pulid_files(MODEL_CACHE)
    for relative, kind in RANDOM_PULID_FILES.items():
        (base / "models" / relative).parent.mkdir(parents=True, exist_ok=True)
        (base / "models" / relative).symlink_to(pulid_files[kind])
    for relative in PLACEHOLDER_FILES:
        (base / "models" / relative).parent.mkdir(parents=True, exist_ok=True)
        write_placeholder_safetensors(base / "models" / relative)
    # antelopev2 is not available offline: a SYNTHETIC pack assembled from YuNet + SFace stands in under its name
    # (tools/face_test_assets.py); buffalo_l is left empty to show the "no model files" error
    assemble_insightface_pack(base / "models" / "insightface" / "models" / "antelopev2")
    (base / "models" / "insightface" / "models" / "buffalo_l").mkdir()
    (base / "input").mkdir()
    shutil.copy(REFERENCE_PHOTO, base / "input" / "pulid_reference.png")
    (base / "models" / "diffusion_models" / "not_a_student.ckpt").write_bytes(b"\x80\x04this is a pickle")
    comfy_server = ComfyServer(comfy_host.COMFYUI_DIR, base, base / "server.log").start()
    try:
        yield comfy_server
    finally:
        comfy_server.stop()
