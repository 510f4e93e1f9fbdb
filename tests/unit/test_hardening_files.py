"""The pure pieces of the hardening: one writer per run folder, file modes, and messages for damaged files."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from onestep.distill.checkpoint import RunFolderLocked, run_lock
from onestep.distill.student_file import StudentFileError, read_student_metadata, write_safetensors_atomic
from onestep.pulid.tensor_files import DamagedFileError, PickledFileError, read_tensors
from onestep.safety.errors import SafetyInputError
from onestep.safety.prompts import MAX_PROMPT_CHARS, read_prompt_file, read_text_lines

TOOLS = Path(__file__).resolve().parents[2] / "tools"


class NotATensor:
    """An object weights-only loading refuses: the file would need pickle."""


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_is_released_after(tmp_path):
    with run_lock(tmp_path / "run", owner="first"):
        with pytest.raises(RunFolderLocked, match=rf"being written by another run \(host .*, pid {os.getpid()}, "
                                                  r"since .*, first\)"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):
        pass


HOLDER = """
import sys, time
sys.path.insert(0, {tools!r})
import pack_loader
pack_loader.load_pack()
from onestep.distill.checkpoint import run_lock
with run_lock({run!r}):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_lock_does_not_outlive_a_killed_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(tools=str(TOOLS), run=str(tmp_path / "run"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked, match=f"pid {holder.pid}"):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path / "run"):  # kill -9 left the lock file, not the lock
        assert (tmp_path / "run" / ".lock").exists()


def test_safetensors_are_written_0644_whatever_the_umask_and_the_umask_is_left_alone(tmp_path):
    previous = os.umask(0o077)
    try:
        write_safetensors_atomic(tmp_path / "a.safetensors", {"x": torch.ones(2)}, {})
        write_safetensors_atomic(tmp_path / "a.safetensors", {"x": torch.zeros(2)}, {})  # rewritten
        assert os.umask(0o077) == 0o077, "the writer did not change the process umask"
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"], "no temporary file left"


def test_a_damaged_safetensors_is_not_sent_to_the_pickle_converter(tmp_path):
    whole = tmp_path / "whole.safetensors"
    write_safetensors_atomic(whole, {"x": torch.ones(1000)}, {})
    (tmp_path / "cut.safetensors").write_bytes(whole.read_bytes()[:2000])
    (tmp_path / "noise.safetensors").write_bytes(b"\x13\x37" + bytes(range(200)))
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04junk")
    for name in ("cut", "noise"):
        with pytest.raises(StudentFileError, match="truncated or damaged") as error:
            read_student_metadata(tmp_path / f"{name}.safetensors")
        assert "convert_student" not in str(error.value)
    with pytest.raises(StudentFileError, match="convert_student.py --allow-pickle"):
        read_student_metadata(tmp_path / "pickle.safetensors")


def test_weight_files_with_garbage_say_so(tmp_path):
    (tmp_path / "header.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{nope")
    (tmp_path / "noise.bin").write_bytes(b"\x13\x37" + bytes(range(256)))
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04" + bytes(64))
    for name in ("header.safetensors", "noise.bin", "zip.pt"):
        with pytest.raises(DamagedFileError, match=f"{name} is not a readable PuLID weights file"):
            read_tensors(tmp_path / name, "PuLID weights")

    torch.save({"x": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(PickledFileError, match="would need pickle"):
        read_tensors(tmp_path / "pickled.pt", "PuLID weights")


def test_prompt_files_must_be_utf8_text_and_prompts_not_huge(tmp_path):
    (tmp_path / "binary.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SafetyInputError, match="binary.txt is a binary file"):
        read_text_lines(tmp_path / "binary.txt")
    with pytest.raises(SafetyInputError, match="latin1.txt is not UTF-8 text"):
        read_text_lines(tmp_path / "latin1.txt")
    long = '{"prompt": "%s", "category": "x"}\n' % ("a" * (MAX_PROMPT_CHARS + 1))
    (tmp_path / "long.jsonl").write_text(long)
    with pytest.raises(SafetyInputError, match=f"line 1: the prompt is {MAX_PROMPT_CHARS + 1} characters long"):
        read_prompt_file(tmp_path / "long.jsonl")
