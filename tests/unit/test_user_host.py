"""`make test COMFYUI=...`: a folder that is not a ComfyUI, or a Python that is not its, gets one line saying so."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def user_host(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "user_host.py"), *map(str, args)],
                          capture_output=True, text=True)


def comfyui_like(folder: Path) -> Path:
    (folder / "comfy").mkdir(parents=True)
    for name in ("main.py", "folder_paths.py", "nodes.py"):
        (folder / name).write_text("")
    return folder


def test_a_folder_that_is_not_a_comfyui_is_named_with_what_it_lacks(tmp_path):
    (tmp_path / "main.py").write_text("")
    answer = user_host(tmp_path)
    assert answer.returncode == 2 and answer.stdout == ""
    assert answer.stderr.count("\n") == 1
    assert f"{tmp_path} is not a ComfyUI folder: it has no comfy, folder_paths.py, nodes.py" in answer.stderr


def test_make_test_with_such_a_folder_stops_with_that_line(tmp_path):
    answer = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), "test", f"COMFYUI={tmp_path}"],
                            capture_output=True, text=True)
    assert answer.returncode != 0
    assert f"{tmp_path} is not a ComfyUI folder" in answer.stderr and "pytest" not in answer.stdout


def test_the_python_of_the_folder_is_found_and_a_python_without_torch_refused(tmp_path):
    folder = comfyui_like(tmp_path / "ComfyUI")
    (folder / "venv" / "bin").mkdir(parents=True)
    (folder / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (folder / "venv" / "bin" / "python").chmod(0o755)
    answer = user_host(folder)
    assert answer.returncode == 0 and answer.stdout.strip() == str(folder / "venv" / "bin" / "python")
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\nexec /usr/bin/env -i python3 -I -S \"$@\"\n")
    bare.chmod(0o755)
    refused = user_host(folder, bare)
    assert refused.returncode == 2 and "is not ComfyUI's Python (it cannot import torch)" in refused.stderr
