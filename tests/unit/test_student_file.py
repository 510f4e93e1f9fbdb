"""Student files: safetensors only, metadata round trip, atomic writes, and the offline pickle converter."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from onestep.distill.student_file import (
    StudentFileError,
    StudentInfo,
    read_student_metadata,
    write_safetensors_atomic,
)
from safetensors import safe_open
from safetensors.torch import load_file

CONVERTER = Path(__file__).resolve().parents[2] / "tools" / "convert_student.py"


def test_metadata_round_trips_through_a_file(tmp_path):
    info = StudentInfo(preset="sid-lsg", timestep=625, method="sid-lsg", teacher="SD1.5", steps=40000)
    path = tmp_path / "student.safetensors"
    write_safetensors_atomic(path, {"w": torch.ones(2)}, info.to_metadata())
    assert StudentInfo.from_metadata(read_student_metadata(path)) == info
    assert StudentInfo.from_metadata({"other": "x"}) is None


def test_non_safetensors_files_are_refused_with_the_converter_named(tmp_path):
    pickled = tmp_path / "student.ckpt"
    torch.save({"w": torch.ones(2)}, pickled)
    with pytest.raises(StudentFileError, match="not a safetensors file.*convert_student.py --allow-pickle"):
        read_student_metadata(pickled)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    with pytest.raises(StudentFileError, match="not a safetensors file"):
        read_student_metadata(disguised)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "student.safetensors"
    write_safetensors_atomic(path, {"w": torch.ones(2)}, {})
    with pytest.raises(AttributeError):
        write_safetensors_atomic(path, {"w": "not a tensor"}, {})
    torch.testing.assert_close(load_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]


def run_converter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONVERTER), *args], capture_output=True, text=True, timeout=120)


def test_converter_refuses_to_unpickle_without_the_flag(tmp_path):
    source = tmp_path / "sid_lsg.pkl"
    torch.save(torch.nn.Linear(3, 2), source)
    result = run_converter(str(source), str(tmp_path / "out.safetensors"))
    assert result.returncode == 2
    assert "--allow-pickle" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_turns_a_pickled_module_into_safetensors_with_metadata(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Linear(8, 4))
    source, output = tmp_path / "sid_lsg.pkl", tmp_path / "student.safetensors"
    torch.save(module, source)
    result = run_converter("--allow-pickle", str(source), str(output), "--preset", "sid-lsg", "--teacher", "SD1.5")
    assert result.returncode == 0, result.stderr
    converted = load_file(output)
    assert converted.keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(converted[key], value)
    with safe_open(str(output), framework="pt") as handle:
        info = StudentInfo.from_metadata(handle.metadata())
    assert (info.preset, info.teacher) == ("sid-lsg", "SD1.5")


def test_converter_reads_sim_ema_dicts_and_strips_the_7_character_prefix(tmp_path):
    ema = {"module.blocks.0.weight": torch.randn(3, 3), "module.final.bias": torch.randn(3)}
    source, output = tmp_path / "sim.pth", tmp_path / "sim.safetensors"
    torch.save({"ema": ema, "step": 100}, source)
    result = run_converter("--allow-pickle", "--half", str(source), str(output), "--preset", "sim-pixart")
    assert result.returncode == 0, result.stderr
    converted = load_file(output)
    assert set(converted) == {"blocks.0.weight", "final.bias"}
    assert converted["final.bias"].dtype == torch.float16
    torch.testing.assert_close(converted["final.bias"].float(), ema["module.final.bias"], atol=1e-3, rtol=1e-3)
