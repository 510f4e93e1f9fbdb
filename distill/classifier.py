"""The Fashion-MNIST classifier whose penultimate features define FD-FMNIST (a Fréchet distance, not FID).

There are no Inception weights here, so the feature network is this project's own: a small CNN
trained on Fashion-MNIST; ``features(x)`` (128 dims after ReLU) feeds ``frechet.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


class FMNISTClassifier(nn.Module):
    """Conv(32)x2 - pool - Conv(64)x2 - pool - Conv(128) - global mean - Linear(feature_dim) - Linear(10)."""

    def __init__(self, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        self.trunk = nn.Sequential(
            *conv_bn_relu(1, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *conv_bn_relu(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)
        self._config = {"feature_dim": feature_dim, "num_classes": num_classes}

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the network around a state dict."""
        return dict(self._config)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of images in [-1, 1]: the space FD-FMNIST is measured in."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


@torch.no_grad()
def batched_features(classifier: FMNISTClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Features of many images, in float64, computed in eval mode one batch at a time."""
    classifier.eval()
    device = next(classifier.parameters()).device
    chunks = [classifier.features(images[i : i + batch_size].to(device)).double().cpu()
              for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks)
