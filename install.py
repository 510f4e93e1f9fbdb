"""Installs the two packages whose metadata would put `onnxruntime` beside `onnxruntime-gpu`, without their
dependencies (what they import is in requirements.txt or comes with ComfyUI).

ComfyUI-Manager runs this after `pip install -r requirements.txt`; by hand: `python install.py` with ComfyUI's
Python, from the pack's folder.
"""

import subprocess
import sys

NO_DEPS = ["insightface==2.1", "nudenet==3.4.2"]

if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
                              *NO_DEPS]))
