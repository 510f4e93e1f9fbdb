"""The shipped workflows, as the e2e tier reads them."""

import json
from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parents[1] / "workflows"
PACK_FOLDER_NAME = "ComfyUI-OneStep.dev"  # a dot and a dash: ComfyUI must still import the pack


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / "api" / f"{name}.json").read_text())


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
