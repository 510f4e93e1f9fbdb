"""What ComfyUI-Manager (requirements.txt) and the Comfy Registry (pyproject.toml) install is the same list, and
never ComfyUI's own torch or `onnxruntime` beside `onnxruntime-gpu` on one platform."""

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_OWNED = {"torch", "torchvision", "torchaudio"}


def requirements_txt() -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_requirements_txt_and_pyproject_list_the_same_packages():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(map(str, requirements_txt())) == sorted(str(Requirement(d)) for d in project["dependencies"])
    assert (REPO_ROOT / project["license"]["file"]).read_text().lstrip().startswith("Apache License")


def test_no_platform_gets_torch_or_both_onnxruntimes():
    for platform in ("linux", "win32", "darwin"):
        environment = {"sys_platform": platform}
        names = {r.name for r in requirements_txt() if r.marker is None or r.marker.evaluate(environment)}
        assert not names & HOST_OWNED, platform
        assert len(names & {"onnxruntime", "onnxruntime-gpu"}) == 1, platform
