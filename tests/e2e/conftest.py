"""One real ComfyUI server for the e2e tier, with the pack linked under an awkward folder name."""

import comfy_host
import pytest
from comfy_server import ComfyServer
from server_base import build_server_base

comfy_host.import_comfy()  # the tests import the pack's node list, and the random files need comfy's modules


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = build_server_base(tmp_path_factory.mktemp("comfy_base"), random_weights=True)
    comfy_server = ComfyServer(comfy_host.COMFYUI_DIR, base, base / "server.log").start()
    try:
        yield comfy_server
    finally:
        comfy_server.stop()
