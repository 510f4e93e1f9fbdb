"""Conditions as the distillation core sees them: None, a tensor with one row per sample, or a dict of such tensors.

A dict carries several inputs that belong to the same prompt (SDXL: ``c_crossattn`` token embeddings and the ``y``
vector of pooled text and size embeddings); its rows are drawn, sliced and dropped together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Condition = Tensor | dict[str, Any] | None


def map_condition(function: Callable[[Tensor], Tensor], cond: Condition) -> Condition:
    """Apply ``function`` to every tensor of a condition (a tensor, a dict of them, or None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {key: map_condition(function, value) for key, value in cond.items()}
    return function(cond)


def first_tensor(cond: Condition) -> Tensor:
    """The first tensor of a condition (its rows, device and dtype stand for the whole)."""
    return first_tensor(next(iter(cond.values()))) if isinstance(cond, dict) else cond


def condition_rows(cond: Condition) -> int:
    """Rows (samples) of a condition."""
    return first_tensor(cond).shape[0]


def slice_rows(cond: Condition, start: int, stop: int) -> Condition:
    """Rows start..stop of every tensor of a condition."""
    return map_condition(lambda t: t[start:stop], cond)


def take_rows(cond: Condition, index: Tensor) -> Condition:
    """The rows ``index`` of every tensor of a condition."""
    return map_condition(lambda t: t[index], cond)


def expand_rows(cond: Condition, rows: int) -> Condition:
    """A one-row condition (the unconditional input) repeated for ``rows`` samples; others unchanged."""
    return map_condition(lambda t: t.expand(rows, *t.shape[1:]) if t.shape[0] == 1 < rows else t, cond)


def condition_to(cond: Condition, device: torch.device) -> Condition:
    return map_condition(lambda t: t.to(device), cond)


def replace_rows(mask: Tensor, replacement: Condition, cond: Condition) -> Condition:
    """``cond`` with the rows where ``mask`` is true taken from ``replacement`` (one row, broadcast)."""
    if isinstance(cond, dict):
        return {key: replace_rows(mask, replacement[key], value) for key, value in cond.items()}
    mask = mask.to(cond.device).reshape((-1,) + (1,) * (cond.ndim - 1))
    return torch.where(mask, replacement.to(cond.dtype).expand_as(cond), cond)
