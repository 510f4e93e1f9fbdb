"""Safetensors files for the pack's own small networks: weights plus the JSON needed to rebuild the module.

Metadata keys: ``onestep.network`` (which class), ``onestep.config`` (its constructor arguments) and
any ``onestep.*`` extras the trainer adds (steps, wall time, metrics). Loading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from .classifier import FMNISTClassifier
from .networks import EDMDenoiser
from .student_file import METADATA_PREFIX, write_safetensors_atomic

NETWORKS: dict[str, type[nn.Module]] = {"edm_denoiser": EDMDenoiser, "fmnist_classifier": FMNISTClassifier}


def network_kind(module: nn.Module) -> str:
    for kind, cls in NETWORKS.items():
        if isinstance(module, cls):
            return kind
    raise TypeError(f"no file format for {type(module).__name__}; known: {sorted(NETWORKS)}")


def save_network(path: str | Path, module: nn.Module, info: dict | None = None) -> None:
    """Write the module's state dict and config atomically; ``info`` values are stored as JSON metadata."""
    metadata = {
        METADATA_PREFIX + "network": json.dumps(network_kind(module)),
        METADATA_PREFIX + "config": json.dumps(module.config()),
    }
    metadata.update({METADATA_PREFIX + key: json.dumps(value) for key, value in (info or {}).items()})
    tensors = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    write_safetensors_atomic(path, tensors, metadata)


def read_info(path: str | Path) -> dict:
    """The file's ``onestep.*`` metadata, JSON-decoded, without the prefix."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return {key[len(METADATA_PREFIX):]: json.loads(value) for key, value in metadata.items()
            if key.startswith(METADATA_PREFIX)}


def load_network(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved network (in eval mode, frozen) from its file; refuses files of unknown kind."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network file {path.name} not found in {path.parent}")
    info = read_info(path)
    kind = info.get("network")
    if kind not in NETWORKS:
        raise ValueError(f"{path}: metadata names network {kind!r}; known: {sorted(NETWORKS)}")
    module = NETWORKS[kind](**info["config"])
    module.load_state_dict(load_file(str(path)))
    return module.to(device).eval().requires_grad_(False)
