"""Memory options of the trainer: gradient checkpointing, the (fused) Adam optimiser, and what a run needs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed_forward(block: nn.Module, *args, **kwargs):
    """The block's own forward under non-reentrant activation checkpointing."""
    return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(module: nn.Module, blocks: Iterable[nn.Module]) -> nn.Module:
    """Recompute each block's activations in backward instead of storing them (torch.utils.checkpoint)."""
    members = {id(m) for m in module.modules()}
    for block in blocks:
        if id(block) not in members:
            raise ValueError(f"{type(block).__name__} is not a submodule of {type(module).__name__}")
        # an instance attribute shadows the class's forward for this block only; state_dict keys stay the same
        block.forward = functools.partial(checkpointed_forward, block)
    return module


def adam(params: Iterable[nn.Parameter], lr: float, betas: tuple, eps: float, fused: bool) -> torch.optim.Optimizer:
    """Adam(betas, eps), or with ``fused`` the fused AdamW kernel at weight decay 0 (the same update as Adam;
    the unfused AdamW where this device has no fused kernel)."""
    params = list(params)
    if not fused:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError) as error:
        logging.getLogger(__name__).warning("fused AdamW is not supported here (%s); using the unfused AdamW", error)
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)


def training_memory_bytes(network_bytes: int, adapter_bytes: int = 0) -> int:
    """Bytes of a run's copies, activations aside: teacher, generator, fake score and EMA (4 networks), and for the
    weights of generator and fake score a gradient and Adam's two moments each (6 more). With LoRA adapters
    (``adapter_bytes`` per network) the students and their EMA share the teacher's weights: one network, and the
    adapters of generator, fake score and EMA with the gradients and moments of the first two (9 x adapters)."""
    if adapter_bytes:
        return network_bytes + 9 * adapter_bytes
    return 10 * network_bytes
