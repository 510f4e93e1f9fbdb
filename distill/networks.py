"""Small pure-PyTorch networks for the Fashion-MNIST teacher: a class-conditional UNet under EDM preconditioning.

``EDMDenoiser(x, sigma, class_labels) -> x0`` is the pack's denoiser interface. Preconditioning after
Karras et al. 2022 ("EDM"), Table 1: ``D = c_skip x + c_out F(c_in x, c_noise, label)``. The label
``num_classes`` (or ``class_labels=None``) is the unconditional "null" class, learnt by label dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (the group count divides the channel count)."""
    return nn.GroupNorm(math.gcd(channels, min(32, channels // 4)), channels)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise = ln(sigma) / 4 at geometric frequencies 1..64, then an MLP."""

    def __init__(self, dim: int, features: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(64.0), features // 2)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResBlock(nn.Module):
    """Pre-activation residual block whose second norm is modulated (scale, shift) by the embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a (small) feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """Class-conditional UNet F(x, c_noise, label): one level per entry of ``channels``, attention at the last."""

    def __init__(
        self, in_channels: int = 1, channels: tuple = (16, 32, 64), blocks: int = 1, emb_dim: int = 128,
        num_classes: int = 10,
    ):
        super().__init__()
        self.noise_embedding = NoiseEmbedding(emb_dim)
        self.label_embedding = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        last = len(channels) - 1

        self.down = nn.ModuleList()
        skips, ch = [channels[0]], channels[0]
        for level, width in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(ch, width, emb_dim))
                ch = width
                if level == last:
                    self.down.append(SelfAttention(ch))
                skips.append(ch)
            if level != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim), SelfAttention(ch), ResBlock(ch, ch, emb_dim)])

        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(channels))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), width, emb_dim))
                ch = width
                if level == last:
                    self.up.append(SelfAttention(ch))
            if level != 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        emb = F.silu(self.noise_embedding(c_noise) + self.label_embedding(labels))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, (ResBlock, SelfAttention)) else layer(h)
            if not isinstance(layer, SelfAttention):
                skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb) if isinstance(layer, (ResBlock, SelfAttention)) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class EDMDenoiser(nn.Module):
    """D(x, sigma, label) = c_skip x + c_out F(c_in x, ln(sigma)/4, label) (Karras et al. 2022, Table 1)."""

    def __init__(
        self, sigma_data: float = 0.5, num_classes: int = 10, in_channels: int = 1, channels: tuple = (16, 32, 64),
        blocks: int = 1, emb_dim: int = 128,
    ):
        super().__init__()
        self.sigma_data = sigma_data
        self.num_classes = num_classes
        self.unet = UNet(in_channels, tuple(channels), blocks, emb_dim, num_classes)
        self._config = {"sigma_data": sigma_data, "num_classes": num_classes, "in_channels": in_channels,
                        "channels": list(channels), "blocks": blocks, "emb_dim": emb_dim}

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the network around a state dict."""
        return dict(self._config)

    def checkpointable_blocks(self) -> list[nn.Module]:
        """The residual and attention blocks, whose activations gradient checkpointing recomputes in backward."""
        layers = (*self.unet.down, *self.unet.mid, *self.unet.up)
        return [layer for layer in layers if isinstance(layer, (ResBlock, SelfAttention))]

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        s = sigma.reshape(-1, 1, 1, 1)
        total = s**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = s * self.sigma_data / total.sqrt()
        c_in = total.rsqrt()
        return c_skip * x + c_out * self.unet(c_in * x, sigma.log() / 4, class_labels)
