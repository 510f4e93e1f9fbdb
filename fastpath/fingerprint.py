"""Fingerprints of what a captured graph depends on beyond its tensor inputs: weights and options."""

import torch

SMALL_TENSOR = 64
"""Tensors up to this many elements enter a fingerprint by value (sigmas, flags); larger ones by identity."""

PER_RUN_IDENTITIES = frozenset({"uuids"})
"""Option entries that change every run without changing the computation (condition identifiers)."""


def parameters_fingerprint(module: torch.nn.Module) -> int:
    """Hash of where every parameter and buffer lives: changes when weights are patched, offloaded or reloaded."""
    return hash(tuple(
        (tensor.data_ptr(), tensor.device.type, tensor.dtype)
        for tensor in (*module.parameters(), *module.buffers())
    ))


def options_fingerprint(value):
    """A hashable summary of a (nested) options value: small tensors and plain values by value, the rest by identity."""
    if isinstance(value, dict):
        return tuple(sorted(
            (str(k), options_fingerprint(v)) for k, v in value.items() if k not in PER_RUN_IDENTITIES
        ))
    if isinstance(value, (list, tuple)):
        return tuple(options_fingerprint(v) for v in value)
    if isinstance(value, torch.Tensor):
        if value.numel() <= SMALL_TENSOR:
            return ("tensor", tuple(value.shape), str(value.dtype), tuple(value.detach().flatten().tolist()))
        return ("tensor", tuple(value.shape), str(value.dtype), value.data_ptr())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ("object", id(value))
