"""Turn the browser tier's screenshots and measurements into files the repository ships.

    python -m pytest tests/browser           # writes tests/browser/artifacts/
    python tools/workflow_media.py           # thumbnails, README screenshot, node sizes
    python tools/build_workflows.py          # re-lays out the workflows with the measured sizes

Writes:
- ``workflows/<name>.jpg``: the thumbnail ComfyUI's template browser shows beside each workflow (the first view of
  the workflow in the real frontend; the Fashion-MNIST demo's after it ran from the Run button);
- ``docs/fmnist_demo.jpg``: the demo's final state, for README.md;
- ``tools/node_sizes.json``: the size the frontend computes for each node of each workflow, which
  ``tools/build_workflows.py`` lays out with.
"""

import json
import os
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ONESTEP_BROWSER_ARTIFACTS", REPO_ROOT / "tests" / "browser" / "artifacts"))
WORKFLOWS_DIR = REPO_ROOT / "workflows"
NODE_SIZES_FILE = REPO_ROOT / "tools" / "node_sizes.json"
DEMO = "onestep_distill_fmnist"
CANVAS_BOX = (60, 80, 1600, 900)  # the canvas in the 1600 x 900 window, without the side bar and the tab strip
THUMBNAIL_WIDTH, THUMBNAIL_QUALITY = 480, 70
SCREENSHOT_WIDTH, SCREENSHOT_QUALITY = 1200, 80


def save_jpeg(source: Path, target: Path, width: int, quality: int, crop: tuple | None = None) -> None:
    image = Image.open(source).convert("RGB")
    if crop:
        image = image.crop(crop)
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, "JPEG", quality=quality, optimize=True, progressive=True)


def node_sizes() -> dict:
    """{workflow: {node id: [width, height]}} from the browser tier's ``<name>.nodes.json`` files."""
    sizes = json.loads(NODE_SIZES_FILE.read_text()) if NODE_SIZES_FILE.exists() else {}
    for measured in sorted(ARTIFACTS.glob("*.nodes.json")):
        name = measured.name.removesuffix(".nodes.json")
        if (WORKFLOWS_DIR / f"{name}.json").exists():
            measured_sizes = json.loads(measured.read_text())
            sizes[name] = {node: [round(w, 1), round(h, 1)] for node, (w, h) in measured_sizes.items()}
    return dict(sorted(sizes.items()))


def main() -> int:
    names = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
    missing = [name for name in names if not (ARTIFACTS / f"{name}.png").exists()]
    if missing:
        print(f"no screenshot of {missing} in {ARTIFACTS}: run `python -m pytest tests/browser` first", file=sys.stderr)
        return 1
    for name in names:
        final = ARTIFACTS / f"{name}.final.png"
        source = final if final.exists() else ARTIFACTS / f"{name}.png"
        save_jpeg(source, WORKFLOWS_DIR / f"{name}.jpg", THUMBNAIL_WIDTH, THUMBNAIL_QUALITY, CANVAS_BOX)
        print(WORKFLOWS_DIR / f"{name}.jpg", "from", source.name)
    demo = ARTIFACTS / f"{DEMO}.final.png"
    if demo.exists():
        save_jpeg(demo, REPO_ROOT / "docs" / "fmnist_demo.jpg", SCREENSHOT_WIDTH, SCREENSHOT_QUALITY, CANVAS_BOX)
        print(REPO_ROOT / "docs" / "fmnist_demo.jpg")
    lines = [f" {json.dumps(name)}: {json.dumps(sizes)}" for name, sizes in node_sizes().items()]
    NODE_SIZES_FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(NODE_SIZES_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
