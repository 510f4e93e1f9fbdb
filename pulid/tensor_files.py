"""Reading weight files without running pickle: safetensors, or ``torch.load(weights_only=True)``."""

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file


class PickledFileError(ValueError):
    """A checkpoint that holds more than tensors and would need pickle to load."""


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (``what`` names the file's role in the error messages)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (looked in {path.parent})")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise PickledFileError(
            f"{path.name} holds more than tensors and would need pickle to load, which this pack never runs: "
            "convert it to .safetensors offline"
        ) from error
