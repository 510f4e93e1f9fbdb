"""Student weight files: safetensors with the metadata this pack writes, and the offline converters.

The nodes only ever read safetensors. Released SiD-LSG students are pickles of whole diffusers
UNets and SIM's are ``torch.load(...)["ema"]`` dicts whose keys carry a 7-character prefix; both
need unpickling, which runs code from the file, so converting them is an explicit offline step.
"""

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

METADATA_PREFIX = "onestep."
SIM_KEY_PREFIX_LENGTH = 7
FILE_MODE = 0o644  # model files are meant to be shared, as ComfyUI's own outputs are


class StudentFileError(ValueError):
    """A student file that cannot be used, with a message that says what to do."""


@dataclass(frozen=True)
class StudentInfo:
    """What a student file says about how to sample it."""

    preset: str = ""
    sigma: float | None = None
    timestep: float | None = None
    method: str = ""
    teacher: str = ""
    steps: int | None = None

    def to_metadata(self) -> dict[str, str]:
        """Flatten to safetensors' string-to-string metadata under the ``onestep.`` prefix."""
        return {METADATA_PREFIX + k: json.dumps(v) for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None) -> "StudentInfo | None":
        """Read the pack's keys back; None when the file carries none of them."""
        metadata = metadata or {}
        values = {}
        for field in fields(cls):
            raw = metadata.get(METADATA_PREFIX + field.name)
            if raw is not None:
                values[field.name] = json.loads(raw)
        return cls(**values) if values else None


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when the file parses as safetensors (header length, then a JSON header)."""
    return safetensors_problem(path) is None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None for a readable safetensors file, else why it is not one (safetensors' own words)."""
    try:
        with safe_open(str(path), framework="pt"):
            return None
    except Exception as error:
        return str(error).strip() or type(error).__name__


def looks_like_pickle(path: str | os.PathLike) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or torch's zip format (starts with 'PK'): what the converter reads."""
    with open(path, "rb") as file:
        head = file.read(2)
    return head[:1] == b"\x80" or head == b"PK"


def not_safetensors_message(path: str | os.PathLike) -> str:
    """Why a file is not a usable safetensors file, and the fix: the converter for pickles, a new copy otherwise."""
    path = Path(path)
    if looks_like_pickle(path):
        return (f"'{path.name}' is not a safetensors file (it is a pickle / torch checkpoint). Student weights load "
                f"only from safetensors; convert a released .pt/.pkl checkpoint offline with "
                f"`python tools/convert_student.py --allow-pickle {path.name} OUT.safetensors`.")
    return (f"'{path.name}' is not a readable safetensors file ({safetensors_problem(path)}): it is truncated or "
            f"damaged (an interrupted download or copy?). Download or save it again; it is not a pickle, so the "
            f"converter cannot help.")


def read_student_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of a student file; refuses anything that is not safetensors."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft") or not is_safetensors(path):
        raise StudentFileError(not_safetensors_message(path))
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def write_safetensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write safetensors through a temporary file, fsync and rename, so a crash never leaves half a file.

    The file ends up 0644, as ComfyUI's SaveImage writes images: the mode is set on the written temporary file just
    before the rename (safetensors may recreate the file it writes), and the process umask is never changed (a
    ComfyUI server is multi-threaded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=metadata)
        with open(temporary, "rb") as written:
            os.fchmod(written.fileno(), FILE_MODE)
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def strip_key_prefix(state_dict: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Drop a fixed-length key prefix (SIM's EMA dicts prefix every key with 7 characters)."""
    return {key[length:]: value for key, value in state_dict.items()}


def state_dict_from_pickle(loaded) -> dict[str, torch.Tensor]:
    """Tensors of an unpickled checkpoint: a whole module (SiD-LSG), an ``ema`` dict (SIM) or a plain dict."""
    if isinstance(loaded, torch.nn.Module):
        return dict(loaded.state_dict())
    if isinstance(loaded, dict) and "ema" in loaded:
        ema = loaded["ema"]
        ema = ema.state_dict() if isinstance(ema, torch.nn.Module) else ema
        return strip_key_prefix(dict(ema), SIM_KEY_PREFIX_LENGTH)
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    raise StudentFileError(
        f"Unrecognised checkpoint content ({type(loaded).__name__}); expected a module, "
        "a dict with an 'ema' entry, or a state dict."
    )
