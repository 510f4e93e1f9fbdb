"""Reading weight files without running pickle: safetensors, or ``torch.load(weights_only=True)``."""

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file


class PickledFileError(ValueError):
    """A checkpoint that holds more than tensors and would need pickle to load."""


class DamagedFileError(ValueError):
    """A weight file that is truncated, damaged, or not a weight file at all."""


def _damaged(path: Path, what: str, error: Exception) -> DamagedFileError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DamagedFileError(
        f"{path.name} is not a readable {what} file ({type(error).__name__}: {reason[:200]}): it is truncated, "
        "damaged or not a weight file (an interrupted download or copy?). Download or copy it again."
    )


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (``what`` names the file's role in the error messages)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (looked in {path.parent})")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as error:  # safetensors' SafetensorError: header too large, invalid JSON, truncated data
            raise _damaged(path, what, error) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # a pickle of classes says so; garbage fails on an opcode
            raise _damaged(path, what, error) from None
        raise PickledFileError(
            f"{path.name} holds more than tensors and would need pickle to load, which this pack never runs: "
            "convert it to .safetensors offline"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # not a zip / pickle stream, truncated
        raise _damaged(path, what, error) from None
