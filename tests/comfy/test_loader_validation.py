"""The PuLID loaders refuse, when the prompt is queued, a file they do not list: the message names the node, the
value, the folders and the fix (ComfyUI 0.3.75 does not check V3 combo values itself)."""

import pytest
from onestep.nodes.pulid_loaders import (
    PuLIDEvaClipLoader,
    PuLIDFaceAnalysisLoader,
    PuLIDFaceParsingLoader,
    PuLIDModelLoader,
)

LOADERS = [(PuLIDModelLoader, "PuLID Load Model", "pulid", "pulid_v9.safetensors"),
           (PuLIDEvaClipLoader, "PuLID Load EVA-CLIP", "clip_vision", "EVA03.pt"),
           (PuLIDFaceAnalysisLoader, "PuLID Load Face Analysis", "insightface", "antelopev9"),
           (PuLIDFaceParsingLoader, "PuLID Load Face Parsing", "facexlib", "parsing_bisenet_v9.pth")]


@pytest.mark.parametrize(("node", "display_name", "folder", "missing"), LOADERS)
def test_a_missing_file_is_named_when_queued(node, display_name, folder, missing):
    message = node.validate_inputs(missing)
    assert message.startswith(f"{display_name}: '{missing}' is not among the files it can load in ")
    assert folder in message and "pick one of the" in message


@pytest.mark.parametrize(("node", "display_name", "folder", "missing"), LOADERS)
def test_every_listed_file_passes(node, display_name, folder, missing):
    options = node.GET_SCHEMA().inputs[0].options
    assert all(node.validate_inputs(option) is True for option in options)
