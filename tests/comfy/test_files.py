"""nodes/files.py: names stay inside ComfyUI's folders; writes are atomic and 0644."""

import os
import stat

import folder_paths
import pytest
from onestep.distill.checkpoint import atomic_write_bytes
from onestep.nodes.files import (
    PathInputError,
    file_fingerprint,
    input_path,
    output_file,
    plain_name,
)


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "is an absolute path"),
    ("C:\\Windows\\x", "is an absolute path"),
    ("../../etc/passwd", "contains '..'"),
    ("a/../../b", "contains '..'"),
    ("..\\..\\x", "contains '..'"),
    ("bad\x00name", "contains a NUL byte"),
    ("x" * 256, "256 bytes (at most 255)"),
    ("x/" * 600, "characters long (at most 1024)"),
    ("   ", "is empty"),
])
def test_names_that_leave_the_folder_are_refused(name, message):
    with pytest.raises(PathInputError) as error:
        input_path("Node X", "prompt_file", name)
    assert str(error.value).startswith("Node X: prompt_file") and message in str(error.value)


def test_names_inside_the_folders(input_folder, output_folder):
    assert input_path("N", "f", "sub/prompts.txt") == input_folder / "sub" / "prompts.txt"
    assert plain_name("N", "name", " my_student ", "models/onestep") == "my_student"
    with pytest.raises(PathInputError, match="must be a plain name"):
        plain_name("N", "name", "a/b", "models/onestep")
    first = output_file("N", "filename_prefix", "reports/audit", ".json")
    assert first == output_folder / "reports" / "audit_00001.json"
    first.write_text("{}")
    assert output_file("N", "filename_prefix", "reports/audit", ".json").name == "audit_00002.json"
    with pytest.raises(PathInputError, match="absolute path"):
        output_file("N", "filename_prefix", str(output_folder.parent / "x"), ".json")
    assert folder_paths.get_output_directory() == str(output_folder)


def test_writes_are_atomic_and_0644(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "a" / "b.json", b"one")
        atomic_write_bytes(tmp_path / "a" / "b.json", b"two")
    finally:
        os.umask(previous)
    target = tmp_path / "a" / "b.json"
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_fingerprint_follows_mtime_and_size(tmp_path):
    path = tmp_path / "f"
    assert file_fingerprint(path).startswith("missing")
    path.write_bytes(b"1")
    first = file_fingerprint(path)
    os.utime(path, ns=(1, 10**18))
    assert file_fingerprint(path) != first
