"""Shared by the Distiller tests: a tiny conditional denoiser and a small config."""

import torch
from onestep.distill.training import DistillConfig
from torch import nn

SHAPE = (1, 2, 2)


class TinyDenoiser(nn.Module):
    """A small conditional denoiser on 1x2x2 'images': D = c_skip x + c_out F(c_in x, ln sigma, cond)."""

    def __init__(self, hidden=16, cond_dim=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 + 1 + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 4))
        self.cond_dim = cond_dim

    def forward(self, x, sigma, cond=None):
        b = x.shape[0]
        sigma = sigma.reshape(b, 1)
        cond = torch.zeros(b, self.cond_dim, device=x.device) if cond is None else cond.expand(b, -1)
        total = sigma**2 + 0.25
        h = torch.cat([x.reshape(b, 4) / total.sqrt(), sigma.log() / 4, cond], dim=1)
        out = 0.25 / total * x.reshape(b, 4) + 0.5 * sigma / total.sqrt() * self.net(h)
        return out.reshape(x.shape)


def config(**overrides):
    defaults = dict(
        steps=6, batch_size=8, sample_shape=SHAPE, lr_generator=1e-3, lr_fake_score=1e-3, seed=7, keep_checkpoints=None
    )
    return DistillConfig(**(defaults | overrides))
