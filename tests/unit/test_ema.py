"""EMA: EDM half-life in images (with ramp-up) and a plain beta."""

import pytest
import torch
from onestep.distill.ema import EMA, ema_beta_from_halflife, ramped_halflife_nimg
from torch import nn


def test_halflife_halves_the_weight_of_old_values():
    beta = ema_beta_from_halflife(batch_size=64, halflife_nimg=6400)
    assert beta ** (6400 / 64) == pytest.approx(0.5)


def test_rampup_caps_the_halflife_early():
    assert ramped_halflife_nimg(500, cur_nimg=10_000, rampup_ratio=0.05) == 500
    assert ramped_halflife_nimg(500, cur_nimg=10**8, rampup_ratio=0.05) == 500_000
    assert ramped_halflife_nimg(500, cur_nimg=10, rampup_ratio=None) == 500_000


def test_update_is_a_lerp_towards_the_live_weights():
    live = nn.Linear(3, 2)
    ema = EMA(live, halflife_kimg=None, beta=0.9)
    start = ema.module.weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    assert ema.update(live, batch_size=8, cur_nimg=0) == 0.9
    torch.testing.assert_close(ema.module.weight, 0.9 * start + 0.1 * live.weight)
    assert not ema.module.weight.requires_grad


def test_first_update_with_rampup_copies_the_live_weights():
    live = nn.Linear(3, 2)
    ema = EMA(live, halflife_kimg=0.5, rampup_ratio=0.05)
    with torch.no_grad():
        live.weight.mul_(-2)
    assert ema.update(live, batch_size=8, cur_nimg=0) == 0.0
    torch.testing.assert_close(ema.module.weight, live.weight)


def test_ema_needs_exactly_one_rule():
    with pytest.raises(ValueError):
        EMA(nn.Linear(1, 1), halflife_kimg=None, beta=None)
    with pytest.raises(ValueError):
        EMA(nn.Linear(1, 1), halflife_kimg=1.0, beta=0.9)
