"""The browser tier: a real ComfyUI server with the pack, ComfyUI's own frontend, Debian's Chromium driven by
Playwright (the system browser: Playwright cannot download its own here).

Screenshots go to tests/browser/artifacts/ (git-ignored): the first view of every workflow, the Fashion-MNIST
demo's final state, and the page of any failed test (``FAILED-<test>.png``). tools/workflow_media.py turns them
into the workflow thumbnails, README's screenshot and tools/node_sizes.json.
"""

import json
import os
import shutil
from pathlib import Path

import comfy_host
import pytest
from comfy_server import ComfyServer
from server_base import build_server_base

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 900}  # tools/build_workflows.py fits the first view to this window
ARTIFACTS = Path(os.environ.get("ONESTEP_BROWSER_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
# The frontend's user settings for the test page: no first-run template browser over the canvas.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
            "Comfy.Workflow.ShowMissingNodesWarning": True, "Comfy.Workflow.ShowMissingModelsWarning": True}
# Another frontend build for the same server (a folder holding its index.html), e.g. the one of another ComfyUI host.
FRONTEND_ROOT = os.environ.get("ONESTEP_FRONTEND_ROOT")
FRONTEND_READY = "() => !!(window.app && window.app.graph && window.app.canvas && window.app.vueAppReady !== false)"


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        item.onestep_failed = True


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("FAILED-*"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser_server(tmp_path_factory):
    base = build_server_base(tmp_path_factory.mktemp("browser_base"), random_weights=False)
    # Every file a workflow names exists, so the frontend's missing-model warning (frontend 1.45) has nothing to
    # report: the audit's student, until the demo writes the real one, is the shipped teacher under its name.
    (base / "models" / "onestep").mkdir(parents=True, exist_ok=True)
    shutil.copy(comfy_host.REPO_ROOT / "models" / "fmnist" / "teacher.safetensors",
                base / "models" / "onestep" / "fmnist_sid_student.safetensors")
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    extra_args = ("--front-end-root", FRONTEND_ROOT) if FRONTEND_ROOT else ()
    server = ComfyServer(comfy_host.COMFYUI_DIR, base, base / "server.log", extra_args).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tier needs Debian's Chromium at {CHROMIUM}: run `apt-get install -y chromium` "
                    "(as root; `make test` does it when it runs as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tier needs Playwright for Python: `pip install -r requirements-dev.txt`")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport=VIEWPORT)
        # Nothing leaves the machine: the frontend's calls to outside hosts fail at once instead of timing out.
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else route.abort())
        try:
            yield context
        finally:
            context.close()


class FrontendPage:
    """One tab of ComfyUI's frontend, with what it logged."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.errors: list[str] = []  # uncaught exceptions and console errors, in order
        self.loaded_by_others = False
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)
        page.goto(server.url)
        page.wait_for_function(FRONTEND_READY, timeout=180_000)
        page.wait_for_timeout(1000)

    def _console(self, message) -> None:
        url = message.location.get("url", "")
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and not url.startswith(self.server.url):
            return  # the frontend asking outside hosts (node registry, fonts): blocked here, not the pack's doing
        self.errors.append(f"console: {message.text} @ {url}")

    def load(self, workflow: dict, name: str) -> list[str]:
        """Load a UI workflow as the template browser does; returns the errors logged while loading."""
        self.page.keyboard.press("Escape")
        before = len(self.errors)
        self.page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, null); }",
                           [workflow, name])
        self.page.wait_for_timeout(700)
        return self.errors[before:]

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))


@pytest.fixture(scope="session")
def frontend(browser_context, browser_server) -> FrontendPage:
    return FrontendPage(browser_context.new_page(), browser_server)


@pytest.fixture(autouse=True)
def screenshot_on_failure(request, artifacts):
    yield
    if getattr(request.node, "onestep_failed", False) and "frontend" in request.fixturenames:
        frontend = request.getfixturevalue("frontend")
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
        frontend.screenshot(artifacts / f"FAILED-{name}.png")
        shutil.copy(frontend.server.log_path, artifacts / f"FAILED-{name}.server.log")
