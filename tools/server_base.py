"""The base directory of a test ComfyUI server (``main.py --base-directory``): the pack linked under an awkward
folder name, the files the shipped workflows name, a reference photo and a synthetic InsightFace pack.

Shared by the e2e tier (real random-weight SD1.5 / PuLID files, so those graphs run) and the browser tier
(placeholders only: it runs the Fashion-MNIST demo, whose files ship with the pack, and loads the rest).
"""

import shutil
from importlib.util import find_spec
from pathlib import Path

from face_test_assets import assemble_insightface_pack
from workflow_files import PACK_FOLDER_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO_ROOT / ".cache" / "models"

# Files the shipped workflows name, and what the e2e tier puts there.
RANDOM_SD15_FILES = {
    "checkpoints/v1-5-pruned-emaonly.safetensors": "checkpoint",
    "diffusion_models/sid_lsg_sd15_cfg1.5.safetensors": "unet",
}
# SDXL-structured files (tools/random_models.py: SDXL's blocks at one width, detected as SDXL) under their own names:
# the e2e tier points the DMD2 workflows at them; the names the workflows ship with stay placeholders.
RANDOM_SDXL_FILES = {"checkpoints/random_sdxl_structure.safetensors": "checkpoint",
                     "diffusion_models/random_dmd2_sdxl_1step_unet_fp16.safetensors": "dmd2",
                     "pulid/random_pulid_v1.1_sdxl_structure.safetensors": "pulid"}
# Official-size PuLID v1.1, EVA-CLIP and BiSeNet face parser with random weights, under the names the workflows use.
RANDOM_PULID_FILES = {"pulid/pulid_v1.1.safetensors": "pulid", "clip_vision/EVA02_CLIP_L_336_psz14_s6B.pt": "eva_clip",
                      "facexlib/parsing_bisenet.pth": "face_parsing"}
# The SIM workflow needs a 4.7B-parameter T5-XXL: too large to fabricate here, so these names exist only
# for the server's validation of the graph (see test_workflows.py).
PLACEHOLDER_FILES = [
    "diffusion_models/sim_dit_600m.safetensors",
    "text_encoders/t5xxl_fp16.safetensors",
    "vae/sd-vae-ft-ema.safetensors",
    # PuLID: the SDXL / FLUX bases and PuLID FLUX are 1-24 GB each (see test_pulid_workflows.py)
    "checkpoints/sd_xl_base_1.0.safetensors",
    "diffusion_models/sdxl_one_step_student.safetensors",
    "diffusion_models/dmd2_sdxl_1step_unet_fp16.safetensors",
    "diffusion_models/flux1-dev.safetensors",
    "text_encoders/clip_l.safetensors",
    "vae/ae.safetensors",
    "pulid/pulid_flux_v0.9.1.safetensors",
]
REFERENCE_PHOTO = Path(find_spec("skimage").origin).parent / "data" / "astronaut.png"


def write_placeholder_safetensors(path: Path) -> None:
    """A valid safetensors file with no tensors: listed and named by loaders, refused when loaded."""
    header = b'{"__metadata__":{"onestep.placeholder":"true"}}'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def _link(base: Path, relative: str, target: Path) -> None:
    (base / "models" / relative).parent.mkdir(parents=True, exist_ok=True)
    (base / "models" / relative).symlink_to(target)


def build_server_base(base: Path, random_weights: bool) -> Path:
    """Lay out ``base`` for ``ComfyServer(..., base, ...)``.

    ``random_weights``: full-size random SD1.5 and PuLID files (cached in .cache/models; minutes and ~6 GB the
    first time) where the workflows name them, and SDXL-structured ones (~4.2 GB) under RANDOM_SDXL_FILES' names;
    otherwise placeholders there too.
    """
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "user").mkdir()  # ComfyUI 0.28 logs "Failed to initialize database" without it
    if random_weights:
        from random_models import ensure_random_pulid_files, ensure_random_sd15_files, ensure_random_sdxl_files

        sd15 = ensure_random_sd15_files(MODEL_CACHE)
        for relative, kind in RANDOM_SD15_FILES.items():
            _link(base, relative, sd15[kind])
        pulid = ensure_random_pulid_files(MODEL_CACHE)
        for relative, kind in RANDOM_PULID_FILES.items():
            _link(base, relative, pulid[kind])
        sdxl = ensure_random_sdxl_files(MODEL_CACHE)
        for relative, kind in RANDOM_SDXL_FILES.items():
            _link(base, relative, sdxl[kind])
    else:
        for relative in [*RANDOM_SD15_FILES, *RANDOM_PULID_FILES, *RANDOM_SDXL_FILES]:
            write_placeholder_safetensors(base / "models" / relative)
    for relative in PLACEHOLDER_FILES:
        write_placeholder_safetensors(base / "models" / relative)
    # antelopev2 is not available offline: a SYNTHETIC pack assembled from YuNet + SFace stands in under its name
    # (tools/face_test_assets.py); buffalo_l is left empty to show the "no model files" error
    assemble_insightface_pack(base / "models" / "insightface" / "models" / "antelopev2")
    (base / "models" / "insightface" / "models" / "buffalo_l").mkdir()
    (base / "input").mkdir()
    shutil.copy(REFERENCE_PHOTO, base / "input" / "pulid_reference.png")
    (base / "models" / "diffusion_models" / "not_a_student.ckpt").write_bytes(b"\x80\x04this is a pickle")
    return base
