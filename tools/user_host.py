"""Find the Python of a user's ComfyUI, for `make test COMFYUI=/path/to/ComfyUI`.

    python tools/user_host.py COMFYUI_DIR [PYTHON]

Prints the Python to run the tiers with: PYTHON when given, else the first of COMFYUI_DIR/venv, COMFYUI_DIR/.venv
and the portable build's ../python_embeded that exists, else the `python3` on PATH. Exits 2 with one line when
COMFYUI_DIR is not a ComfyUI (naming what it lacks), or when that Python cannot import ComfyUI's torch or the
test tools (naming the pip command).
"""

import shutil
import subprocess
import sys
from pathlib import Path

COMFYUI_MARKERS = ("main.py", "comfy", "folder_paths.py", "nodes.py")
PYTHON_CANDIDATES = ("venv/bin/python", ".venv/bin/python", "../python_embeded/python", "venv/Scripts/python.exe",
                     ".venv/Scripts/python.exe", "../python_embeded/python.exe")
TEST_MODULES = {"torch": "torch", "pytest": "pytest", "websocket": "websocket-client"}


def refuse(message: str) -> int:
    print(f"make test COMFYUI=...: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if not argv or not argv[0]:
        return refuse("give the folder of your ComfyUI (the one holding main.py)")
    folder = Path(argv[0]).expanduser()
    missing = [marker for marker in COMFYUI_MARKERS if not (folder / marker).exists()]
    if missing:
        return refuse(f"{folder} is not a ComfyUI folder: it has no {', '.join(missing)}")
    given = argv[1] if len(argv) > 1 and argv[1] else None
    found = [str(folder / candidate) for candidate in PYTHON_CANDIDATES if (folder / candidate).is_file()]
    python = given or (found[0] if found else shutil.which("python3"))
    if python is None:
        return refuse("no Python found: give it with COMFYUI_PYTHON=/path/to/python")
    probe = "import importlib.util, sys; print(*(m for m in sys.argv[1:] if not importlib.util.find_spec(m)))"
    answer = subprocess.run([python, "-c", probe, *TEST_MODULES], capture_output=True, text=True)
    lacking = answer.stdout.split() if answer.returncode == 0 else ["python"]
    if "torch" in lacking or "python" in lacking:
        return refuse(f"{python} is not ComfyUI's Python (it cannot import torch): give it with COMFYUI_PYTHON=")
    if lacking:
        return refuse(f"{python} lacks the test tools {', '.join(TEST_MODULES[m] for m in lacking)}: "
                      f"{python} -m pip install {' '.join(TEST_MODULES[m] for m in lacking)}")
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
