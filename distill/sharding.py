"""FSDP (torch's fully_shard, "FSDP2") for the trained networks: sharding, and full tensors in and out of checkpoints.

A sharded run writes the same checkpoints as an unsharded one (full tensors, parameters in module order), so the
trainer node, DDP jobs and FSDP jobs resume each other's runs.
"""

from __future__ import annotations

import sys
from collections.abc import Collection

import torch
from torch import Tensor, nn


def is_sharded(tensor) -> bool:
    """A DTensor (FSDP's sharded tensor). Checked without importing torch.distributed.tensor, which is slow to
    import: nothing is sharded unless something imported it."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def shard_network(module: nn.Module) -> nn.Module:
    """Shard each block (where the network names its blocks) and then the rest across the processes, in place."""
    from torch.distributed.fsdp import fully_shard

    blocks = module.checkpointable_blocks() if hasattr(module, "checkpointable_blocks") else []
    for block in blocks:
        fully_shard(block)
    return fully_shard(module)


def local_tensor(tensor: Tensor) -> Tensor:
    """This process's shard of a sharded tensor; an ordinary tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole of a sharded tensor (a collective: every process calls it); an ordinary tensor itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def full_state_dict(module: nn.Module, leave_out: Collection[str] = ()) -> dict[str, Tensor]:
    """The module's state dict as whole tensors, without the entries named in ``leave_out``."""
    return {name: full_tensor(value) for name, value in module.state_dict().items() if name not in leave_out}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded state tensor gathered whole."""
    state = optimizer.state_dict()
    state["state"] = {index: {key: full_tensor(value) if isinstance(value, Tensor) else value
                              for key, value in entries.items()} for index, entries in state["state"].items()}
    return state


def _like(target: Tensor, source: Tensor) -> Tensor:
    """``source`` (whole) laid out as ``target``: sharded the same way when target is sharded."""
    source = source.to(device=target.device, dtype=target.dtype)
    if not is_sharded(target):
        return source
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(source, target.device_mesh, target.placements)


def load_full_state_dict(module: nn.Module, state: dict[str, Tensor], may_be_missing: Collection[str] = ()) -> None:
    """load_state_dict from whole tensors, into sharded parameters too; entries named in ``may_be_missing`` keep
    their value when ``state`` lacks them (any other difference in keys is an error)."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(state) - set(may_be_missing), set(state) - set(own)
    if missing or unexpected:
        raise KeyError(f"state dict keys differ: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for name, target in own.items():
            if name in state:
                local_tensor(target).copy_(local_tensor(_like(target, state[name])))


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict from whole tensors, resharding the moments of sharded parameters."""
    optimizer.load_state_dict(state)
    for parameter, entries in optimizer.state.items():
        if is_sharded(parameter):
            for key, value in entries.items():
                if isinstance(value, Tensor) and not is_sharded(value) and value.shape == parameter.shape:
                    entries[key] = _like(parameter, value)
