"""BiSeNet face parsing (19 CelebAMask-HQ classes), as facexlib builds it for ``parsing_bisenet.pth``.

Yu et al. 2018, "BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation"
(arXiv 1808.00897), in the face-parsing variant of zllrunning/face-parsing.PyTorch that facexlib ships
(``facexlib/parsing/bisenet.py`` and ``resnet.py``): a ResNet-18 context path with attention refinement
modules on its 1/16 and 1/32 features, the 1/8 ResNet features standing in for the spatial path, a
feature fusion module, and three output heads (main, 1/8 and 1/16 auxiliaries) upsampled to the input
size. The module and parameter names are facexlib's, so that its weight file loads with ``strict=True``.
PuLID uses the main head's logits on an ImageNet-normalised 512x512 aligned crop.
"""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .tensor_files import read_tensors

NUM_CLASSES = 19
WEIGHTS_NAME = "parsing_bisenet.pth"
WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # facexlib / BasicSR checkpoints may nest the weights


class FaceParsingFileError(ValueError):
    """A weight file that is not facexlib's BiSeNet face parser."""


def global_average(x: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial dimensions, kept as a 1x1 map (``avg_pool2d`` over the whole map)."""
    return x.mean(dim=(2, 3), keepdim=True)


class ConvBNReLU(nn.Module):
    """Bias-free convolution, batch norm, ReLU."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions plus a shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def basic_layer(in_chan: int, out_chan: int, blocks: int = 2, stride: int = 1) -> nn.Sequential:
    """``blocks`` basic blocks, the first one changing channels and stride."""
    return nn.Sequential(
        BasicBlock(in_chan, out_chan, stride), *(BasicBlock(out_chan, out_chan) for _ in range(blocks - 1))
    )


class ResNet18(nn.Module):
    """ResNet-18 without its classifier, returning the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = basic_layer(64, 64)
        self.layer2 = basic_layer(64, 128, stride=2)
        self.layer3 = basic_layer(128, 256, stride=2)
        self.layer4 = basic_layer(256, 512, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    """Features re-weighted per channel by a sigmoid of their global average (BiSeNet's ARM)."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(global_average(feat))))


class ContextPath(nn.Module):
    """ResNet-18 features refined top-down: returns (1/8 ResNet features, 1/8 context, 1/16 context)."""

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(global_average(feat32))  # broadcast over the 1/32 map (nearest upsampling)
        up32 = F.interpolate(self.arm32(feat32) + context, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16), up32


class FeatureFusionModule(nn.Module):
    """Concatenated spatial and context features, fused, plus a squeeze-excitation re-weighted copy."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(global_average(feat)))))
        return feat * attention + feat


class BiSeNetOutput(nn.Module):
    """A 3x3 ConvBNReLU then 1x1 class logits; returns (logits, features)."""

    def __init__(self, in_chan: int, mid_chan: int, num_class: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, num_class, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.conv(x)
        return self.conv_out(feat), feat


class BiSeNet(nn.Module):
    """facexlib's face-parsing BiSeNet. ``forward`` gives (main, aux 1/8, aux 1/16) logits at the input size,
    like facexlib; ``aux=False`` skips the auxiliary heads and returns the main logits alone in a 1-tuple."""

    def __init__(self, num_class: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_class)
        self.conv_out16 = BiSeNetOutput(128, 64, num_class)
        self.conv_out32 = BiSeNetOutput(128, 64, num_class)

    def forward(self, x: torch.Tensor, aux: bool = True) -> tuple[torch.Tensor, ...]:
        size = x.shape[2:]
        feat8, context8, context16 = self.cp(x)
        heads = [(self.conv_out, self.ffm(feat8, context8))]
        if aux:
            heads += [(self.conv_out16, context8), (self.conv_out32, context16)]
        return tuple(
            F.interpolate(head(feat)[0], size=size, mode="bilinear", align_corners=True) for head, feat in heads
        )


def unwrap_state_dict(state) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint that may nest them ('params_ema' / 'params' / 'state_dict') or prefix them
    with 'module.' (saved from DataParallel)."""
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return {}
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def listed(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_bisenet(path: str | Path) -> BiSeNet:
    """facexlib's BiSeNet face parser (``parsing_bisenet.pth``, or a safetensors of the same keys), in eval mode.

    Read without pickle; a file whose keys or shapes are not BiSeNet's raises ``FaceParsingFileError`` naming
    it. ``num_batches_tracked`` buffers (unused in eval) may be absent, as in files saved by older PyTorch."""
    path = Path(path)
    state = unwrap_state_dict(read_tensors(path, f"BiSeNet face parsing weights ({WEIGHTS_NAME})"))
    model = BiSeNet(NUM_CLASSES)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong_shape = [
        f"{key} {list(state[key].shape)} (expected {list(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [f"{what}: {listed(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise FaceParsingFileError(
            f"{path.name} is not facexlib's BiSeNet face parser ({WEIGHTS_NAME}, 19 classes): "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def parser(model: BiSeNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``parse`` callable of ``face_condition``: ImageNet-normalised crop [B, 3, H, W] -> the main head's
    logits [B, 19, H, W] (the official ``parsing_model(input)[0]``), on the input's device and dtype."""

    def parse(x: torch.Tensor) -> torch.Tensor:
        parameter = next(model.parameters())
        with torch.no_grad():
            logits = model(x.to(parameter.device, parameter.dtype), aux=False)[0]
        return logits.to(x.device, x.dtype)

    return parse
