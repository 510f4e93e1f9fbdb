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
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:
        return False


def read_student_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of a student file; refuses anything that is not safetensors."""
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".sft") or not is_safetensors(path):
        raise StudentFileError(
            f"'{path.name}' is not a safetensors file. Student weights load only from safetensors; "
            f"convert a released .pt/.pkl checkpoint offline with "
            f"`python tools/convert_student.py --allow-pickle {path.name} OUT.safetensors`."
        )
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def write_safetensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write safetensors through a temporary file, fsync and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; model files are meant to be shared
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
