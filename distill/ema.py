"""Exponential moving average of the generator's weights.

Two ways to set the decay: EDM's half-life in images (``ema_halflife_kimg``, with a ramp-up that
shortens the half-life early in training), or a plain per-step ``beta``.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable

import torch
from torch import nn

from .sharding import full_state_dict, full_tensor, load_full_state_dict


def ema_beta_from_halflife(batch_size: int, halflife_nimg: float) -> float:
    """Per-step decay for a half-life in images: beta = 0.5^(batch / halflife) (EDM, training_loop.py)."""
    return 0.5 ** (batch_size / max(halflife_nimg, 1e-8))


def ramped_halflife_nimg(halflife_kimg: float, cur_nimg: int, rampup_ratio: float | None) -> float:
    """EDM's ramp-up: the half-life is at most ``rampup_ratio`` times the images seen so far."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return halflife_nimg


class EMA:
    """A frozen copy of a module whose floating-point weights and buffers trail the live ones.

    ``constant`` parameters never change (a LoRA student's base weights): the copy shares them instead of holding
    its own, and the update leaves them alone (their average is themselves).
    """

    def __init__(
        self,
        module: nn.Module,
        halflife_kimg: float | None = 0.5,
        rampup_ratio: float | None = 0.05,
        beta: float | None = None,
        constant: Iterable[nn.Parameter] = (),
    ):
        if (halflife_kimg is None) == (beta is None):
            raise ValueError("EMA needs exactly one of halflife_kimg and beta")
        self.halflife_kimg = halflife_kimg
        self.rampup_ratio = rampup_ratio
        self.beta = beta
        shared = {id(parameter): parameter for parameter in constant}
        self.module = copy.deepcopy(module, memo=dict(shared)).eval()
        self._constant = set(shared)
        for parameter in self.module.parameters():
            if id(parameter) not in self._constant:
                parameter.requires_grad_(False)

    def decay(self, batch_size: int, cur_nimg: int) -> float:
        """This step's beta: the fixed one, or the half-life rule after ``cur_nimg`` images."""
        if self.beta is not None:
            return self.beta
        return ema_beta_from_halflife(batch_size, ramped_halflife_nimg(self.halflife_kimg, cur_nimg, self.rampup_ratio))

    @torch.no_grad()
    def update(self, module: nn.Module, batch_size: int, cur_nimg: int) -> float:
        """ema <- beta ema + (1 - beta) live, for every float parameter and buffer; returns beta."""
        beta = self.decay(batch_size, cur_nimg)
        live = dict(module.named_parameters()) | dict(module.named_buffers())
        for name, average in list(self.module.named_parameters()) + list(self.module.named_buffers()):
            if id(average) in self._constant:
                continue
            source = full_tensor(live[name].detach())  # a sharded (FSDP) network's weights, gathered whole
            if average.is_floating_point():
                average.copy_(source.lerp(average, beta))
            else:
                average.copy_(source)
        return beta

    def state_dict(self, leave_out: Collection[str] = ()) -> dict:
        return full_state_dict(self.module, leave_out)

    def load_state_dict(self, state: dict, may_be_missing: Collection[str] = ()) -> None:
        load_full_state_dict(self.module, state, may_be_missing)
