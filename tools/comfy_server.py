"""A real ComfyUI server in a subprocess, with a temporary base directory, and a small client for it."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

STARTUP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    """Start ``main.py --cpu`` on a free loopback port; always stopped by ``stop()``."""

    def __init__(self, comfyui_dir: Path, base_dir: Path, log_path: Path, extra_args: tuple[str, ...] = ()):
        self.comfyui_dir, self.base_dir, self.log_path = comfyui_dir, base_dir, log_path
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> "ComfyServer":
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base_dir), "--disable-auto-launch", *self.extra_args]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def get_json(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, route: str) -> bytes:
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return response.read()

    def post_prompt(self, prompt: dict, client_id: str) -> tuple[int, dict]:
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def run_prompt(self, prompt: dict, timeout_s: float = 600) -> dict:
        """Queue a prompt, follow the websocket to its end; returns {'status', 'response', 'messages', 'error'}."""
        import websocket  # websocket-client: a test tool, not needed to start and query a server

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout_s)
        try:
            status, response = self.post_prompt(prompt, client_id)
            result = {"status": status, "response": response, "messages": [], "error": None}
            if status != 200:
                return result
            prompt_id = response["prompt_id"]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                raw = ws.recv()
                if not isinstance(raw, str):
                    continue  # binary preview frames
                message = json.loads(raw)
                result["messages"].append(message)
                data = message.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if message["type"] == "execution_success":
                    result["history"] = self.wait_for_history(prompt_id)
                    return result
                if message["type"] == "execution_error":
                    result["error"] = data
                    return result
            raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout_s} s:\n{self.log_tail()}")
        finally:
            ws.close()

    def wait_for_history(self, prompt_id: str, timeout_s: float = 30) -> dict:
        """The prompt's history entry; ComfyUI stores it just after announcing execution_success."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} succeeded but has no history entry after {timeout_s} s")

    def output_images(self, history: dict) -> list[bytes]:
        images = []
        for node_output in history["outputs"].values():
            for image in node_output.get("images", []):
                query = urllib.parse.urlencode(
                    {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
                )
                images.append(self.get_bytes(f"/view?{query}"))
        return images
