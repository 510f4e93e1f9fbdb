"""The pack checks its host at import: an unsuitable ComfyUI gets one message with its version and what it lacks."""

import comfy.model_patcher
import pytest
from onestep.nodes.host_check import UnsupportedHostError, check_host, host_version, missing_pieces


def test_this_host_has_everything_the_pack_uses():
    assert missing_pieces() == []
    check_host()


def test_a_host_without_a_patch_api_is_named_with_its_version(monkeypatch):
    monkeypatch.delattr(comfy.model_patcher.ModelPatcher, "set_model_patch_replace")
    with pytest.raises(UnsupportedHostError) as refused:
        check_host()
    message = str(refused.value)
    assert f"({host_version()})" in message and host_version()[0].isdigit()
    assert "comfy.model_patcher.ModelPatcher.set_model_patch_replace" in message


def test_a_missing_module_is_named():
    assert missing_pieces({"comfy.no_such_module": ["anything"], "comfy.utils": ["ProgressBar", "NoSuchThing"]}) == [
        "comfy.no_such_module", "comfy.utils.NoSuchThing"]
