"""The shipped workflows, as the e2e tier reads them."""

import json
import os
from pathlib import Path

# ONESTEP_WORKFLOW_DIR points the tests at other workflow files, e.g. an older build's, to see what they catch:
#   git archive <commit> workflows | tar -x -C /tmp/old && ONESTEP_WORKFLOW_DIR=/tmp/old/workflows pytest tests/browser
WORKFLOW_DIR = Path(os.environ.get("ONESTEP_WORKFLOW_DIR", Path(__file__).resolve().parents[1] / "workflows"))
PACK_FOLDER_NAME = "ComfyUI-OneStep.dev"  # a dot and a dash: ComfyUI must still import the pack


def load_api_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / "api" / f"{name}.json").read_text())


def load_ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
