"""Where the pack's nodes read and write files: inside ComfyUI's folders, never anywhere else.

Reads come from ``input/``, the model folders, or ``output/`` (run folders); writes go to ``output/`` (with the
containment rule of ComfyUI's SaveImage, ``folder_paths.get_save_image_path``) or to a model folder. A name given
in a widget is relative to its folder: absolute paths, ``..``, NUL bytes and over-long names are refused with a
message naming the node, the value and the fix. Files are written atomically (``distill.checkpoint.atomic_write_bytes``:
temporary file, fsync, rename) with mode 0644, without touching the process umask (the server is multi-threaded).
"""

import os
import re
from pathlib import Path, PurePosixPath

import folder_paths

NAME_BYTES_MAX = 255  # one path component (ext4 and most file systems)
PATH_CHARS_MAX = 1024
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class PathInputError(ValueError):
    """A file or folder name that would leave ComfyUI's folders, or that no file system takes."""


def _shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...' ({len(value)} characters)"


def relative_name(node: str, what: str, name: str, folder: str) -> PurePosixPath:
    """``name`` as a relative path inside ``folder`` (its description for messages), or a refusal."""
    if not isinstance(name, str) or not name.strip():
        raise PathInputError(f"{node}: {what} is empty; give a name inside {folder}.")
    name = name.strip()
    if "\x00" in name:
        raise PathInputError(f"{node}: {what} {_shown(name)} contains a NUL byte; file names cannot. Type the name "
                             "again without it.")
    if len(name) > PATH_CHARS_MAX:
        raise PathInputError(f"{node}: {what} is {len(name)} characters long (at most {PATH_CHARS_MAX}); choose a "
                             "shorter name.")
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or _WINDOWS_DRIVE.match(posix):
        raise PathInputError(f"{node}: {what} {_shown(name)} is an absolute path; files are read and written only "
                             f"inside {folder}. Give a name relative to that folder.")
    if ".." in path.parts:
        raise PathInputError(f"{node}: {what} {_shown(name)} contains '..'; files are read and written only inside "
                             f"{folder}. Give a name relative to that folder, without '..'.")
    for part in path.parts:
        if len(part.encode("utf-8", "surrogatepass")) > NAME_BYTES_MAX:
            raise PathInputError(f"{node}: {what} has a component of {len(part.encode('utf-8', 'surrogatepass'))} "
                                 f"bytes (at most {NAME_BYTES_MAX}); choose a shorter name.")
    return path


def plain_name(node: str, what: str, name: str, folder: str) -> str:
    """A single file or folder name (no sub-folders), checked as ``relative_name`` does."""
    path = relative_name(node, what, name, folder)
    if len(path.parts) != 1 or path.name in (".", ""):
        raise PathInputError(f"{node}: {what} {_shown(name.strip())} must be a plain name without '/', e.g. "
                             "my_student.")
    return path.name


def inside(root: str | os.PathLike, relative: PurePosixPath) -> Path:
    """``root / relative``, checked (after normalisation, not following links) to stay under ``root``."""
    root = os.path.abspath(root)
    full = os.path.abspath(os.path.join(root, *relative.parts))
    if os.path.commonpath([root, full]) != root:
        raise PathInputError(f"{relative} leaves {root}")
    return Path(full)


def input_path(node: str, what: str, name: str) -> Path:
    """A file or folder under ComfyUI's input folder (it may not exist: the caller says what is missing)."""
    root = folder_paths.get_input_directory()
    return inside(root, relative_name(node, what, name, f"ComfyUI's input folder ({root})"))


def model_folder_path(node: str, what: str, folder_name: str, name: str) -> Path:
    """An existing file of a model folder (``folder_paths.get_full_path``), else the path it would have in the first
    folder registered for ``folder_name``."""
    roots = folder_paths.get_folder_paths(folder_name)
    relative = relative_name(node, what, name, f"models/{folder_name} ({roots[0]})")
    found = folder_paths.get_full_path(folder_name, str(relative))
    return Path(found) if found else inside(roots[0], relative)


def output_file(node: str, what: str, prefix: str, suffix: str) -> Path:
    """The next free ``output/<prefix>_NNNNN<suffix>``, refused as SaveImage refuses a prefix outside output/."""
    output_dir = folder_paths.get_output_directory()
    relative = relative_name(node, what, prefix, f"ComfyUI's output folder ({output_dir})")
    try:
        folder, stem, _, _, _ = folder_paths.get_save_image_path(str(relative), output_dir)
    except Exception as error:  # ComfyUI raises a bare Exception for a prefix outside the output folder
        raise PathInputError(f"{node}: {what} {_shown(prefix)} is refused ({error}); give a prefix inside "
                             f"{output_dir}.") from None
    folder = inside(output_dir, PurePosixPath(os.path.relpath(folder, output_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    number = 1
    while (folder / f"{stem}_{number:05d}{suffix}").exists():
        number += 1
    return folder / f"{stem}_{number:05d}{suffix}"


def file_fingerprint(path: str | os.PathLike | None) -> str:
    """(mtime, size) of a file, for V3 ``fingerprint_inputs``: a file changed or deleted on disk is loaded again."""
    if path is None:
        return "missing"
    try:
        stat = os.stat(path)
    except OSError:
        return f"missing:{path}"
    return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
