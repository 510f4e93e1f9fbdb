"""facexlib's BiSeNet face parser: the official key layout, loading without pickle, the whitening it drives.

The expected names and shapes are written down from facexlib ``facexlib/parsing/bisenet.py`` (``BiSeNet(19)``:
``cp`` ContextPath, ``ffm`` FeatureFusionModule(256, 256), ``conv_out`` BiSeNetOutput(256, 256, 19),
``conv_out16`` / ``conv_out32`` BiSeNetOutput(128, 64, 19)) and ``facexlib/parsing/resnet.py`` (``ResNet18``:
``conv1``, ``bn1``, ``layer1..4`` of two ``BasicBlock`` each, a ``downsample`` conv + BN on the first block of
layers 2-4), independently of the module under test. No real ``parsing_bisenet.pth`` ships offline: the
weights are random, saved in that layout.
"""

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from onestep.pulid.face_crop import (
    PARSING_MEAN,
    PARSING_STD,
    WHITENED_CLASSES,
    face_features_image,
    normalize,
    to_gray,
    to_tensor,
)
from onestep.pulid.face_parsing import BiSeNet, FaceParsingFileError, load_bisenet, parser
from onestep.pulid.tensor_files import PickledFileError
from PIL import Image
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_thread")

ASTRONAUT = Path(find_spec("skimage").origin).parent / "data" / "astronaut.png"
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

OFFICIAL_SHAPES = {  # facexlib parsing/resnet.py + parsing/bisenet.py
    "cp.resnet.conv1.weight": [64, 3, 7, 7],
    "cp.resnet.bn1.running_var": [64],
    "cp.resnet.layer1.0.conv1.weight": [64, 64, 3, 3],
    "cp.resnet.layer2.0.conv1.weight": [128, 64, 3, 3],
    "cp.resnet.layer2.0.downsample.0.weight": [128, 64, 1, 1],
    "cp.resnet.layer3.1.conv2.weight": [256, 256, 3, 3],
    "cp.resnet.layer4.0.downsample.1.weight": [512],
    "cp.resnet.layer4.1.bn2.bias": [512],
    "cp.arm16.conv.conv.weight": [128, 256, 3, 3],
    "cp.arm16.conv_atten.weight": [128, 128, 1, 1],
    "cp.arm32.conv.conv.weight": [128, 512, 3, 3],
    "cp.arm32.bn_atten.running_mean": [128],
    "cp.conv_head32.conv.weight": [128, 128, 3, 3],
    "cp.conv_head16.bn.weight": [128],
    "cp.conv_avg.conv.weight": [128, 512, 1, 1],
    "ffm.convblk.conv.weight": [256, 256, 1, 1],
    "ffm.conv1.weight": [64, 256, 1, 1],
    "ffm.conv2.weight": [256, 64, 1, 1],
    "conv_out.conv.conv.weight": [256, 256, 3, 3],
    "conv_out.conv_out.weight": [19, 256, 1, 1],
    "conv_out16.conv.conv.weight": [64, 128, 3, 3],
    "conv_out16.conv_out.weight": [19, 64, 1, 1],
    "conv_out32.conv_out.weight": [19, 64, 1, 1],
}


def conv_bn(prefix: str) -> list[str]:
    """A facexlib ConvBNReLU: bias-free ``conv`` and ``bn``."""
    return [f"{prefix}.conv.weight", *(f"{prefix}.bn.{name}" for name in BN)]


def official_keys() -> set[str]:
    keys = ["cp.resnet.conv1.weight", *(f"cp.resnet.bn1.{name}" for name in BN)]
    for layer in range(1, 5):
        for block in range(2):
            stem = f"cp.resnet.layer{layer}.{block}"
            keys += [f"{stem}.conv1.weight", f"{stem}.conv2.weight"]
            keys += [f"{stem}.bn{i}.{name}" for i in (1, 2) for name in BN]
            if layer > 1 and block == 0:
                keys += [f"{stem}.downsample.0.weight", *(f"{stem}.downsample.1.{name}" for name in BN)]
    for arm in ("cp.arm16", "cp.arm32"):
        keys += [*conv_bn(f"{arm}.conv"), f"{arm}.conv_atten.weight", *(f"{arm}.bn_atten.{name}" for name in BN)]
    for block in ("cp.conv_head32", "cp.conv_head16", "cp.conv_avg", "ffm.convblk"):
        keys += conv_bn(block)
    keys += ["ffm.conv1.weight", "ffm.conv2.weight"]
    for head in ("conv_out", "conv_out16", "conv_out32"):
        keys += [*conv_bn(f"{head}.conv"), f"{head}.conv_out.weight"]
    return set(keys)


@pytest.fixture(scope="module")
def random_bisenet():
    """BiSeNet with random weights and batch-norm statistics (so that the running stats are checked too)."""
    torch.manual_seed(0)
    model = BiSeNet(19)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.01)
            elif name.endswith("running_var"):
                buffer.uniform_(0.9, 1.1)
    return model.eval()


@pytest.fixture(scope="module")
def official_file(random_bisenet, tmp_path_factory):
    """The random BiSeNet saved as facexlib's ``parsing_bisenet.pth`` is: a plain state dict, ``torch.save``."""
    path = tmp_path_factory.mktemp("facexlib") / "parsing_bisenet.pth"
    torch.save(random_bisenet.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def crop():
    """A 512 RGB image in [0, 1], [1, 3, 512, 512] (the astronaut photo stands in for an aligned face crop)."""
    return to_tensor(np.array(Image.open(ASTRONAUT).convert("RGB").resize((512, 512))))


@pytest.fixture(scope="module")
def loaded(official_file):
    return load_bisenet(official_file)


@pytest.fixture(scope="module")
def logits(loaded, crop):
    return parser(loaded)(normalize(crop, PARSING_MEAN, PARSING_STD))


def assert_same_weights(model, reference):
    expected = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_the_key_layout_is_facexlibs(random_bisenet):
    state = random_bisenet.state_dict()
    assert set(state) == official_keys()
    assert {key: list(state[key].shape) for key in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    parameters = sum(p.numel() for p in random_bisenet.parameters())
    assert parameters == 13_300_416  # 53.2 MB in fp32, the size of parsing_bisenet.pth


def test_the_official_file_layout_loads_strictly(loaded, random_bisenet):
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert_same_weights(loaded, random_bisenet)


def test_wrapped_prefixed_and_safetensors_files_load(random_bisenet, tmp_path):
    state = random_bisenet.state_dict()
    old_torch = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"params": old_torch}, tmp_path / "wrapped.pth")
    assert_same_weights(load_bisenet(tmp_path / "wrapped.pth"), random_bisenet)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "parsing_bisenet.safetensors")
    assert_same_weights(load_bisenet(tmp_path / "parsing_bisenet.safetensors"), random_bisenet)


def test_outputs_are_19_class_logits_at_the_input_size(loaded, crop, logits):
    assert logits.shape == (1, 19, 512, 512) and logits.dtype == torch.float32
    x = normalize(crop, PARSING_MEAN, PARSING_STD)
    with torch.no_grad():
        outputs = loaded(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 19, 512, 512)] * 3  # main head, then the two auxiliaries
    torch.testing.assert_close(logits, outputs[0])


def test_the_parsing_map_whitens_background_cloth_hat_ears_and_neck(crop, logits):
    labels = logits.argmax(dim=1, keepdim=True)
    white = torch.isin(labels, torch.tensor(WHITENED_CLASSES)).expand(-1, 3, -1, -1)
    assert white.any() and (~white).any()  # random weights still give a mixed map on a photo
    features = face_features_image(crop, logits)
    assert torch.all(features[white] == 1.0)
    assert torch.equal(features[~white], to_gray(crop)[~white])
    assert torch.all(features[labels.expand(-1, 3, -1, -1) == 0] == 1.0)  # background (class 0) among them


def test_other_files_are_refused_by_name(tmp_path):
    save_file({"conv_out.conv_out.weight": torch.zeros(18, 256, 1, 1), "head.weight": torch.zeros(1)},
              tmp_path / "not_bisenet.safetensors")
    with pytest.raises(FaceParsingFileError, match=r"not_bisenet.safetensors is not facexlib's BiSeNet face parser "
                                                    r".*missing: .*unexpected: head.weight; wrong shape: "
                                                    r"conv_out.conv_out.weight \[18, 256, 1, 1\] \(expected \[19"):
        load_bisenet(tmp_path / "not_bisenet.safetensors")
    torch.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "whole_model.pth")  # a pickled module, not a state dict
    with pytest.raises(PickledFileError, match="whole_model.pth holds more than tensors"):
        load_bisenet(tmp_path / "whole_model.pth")
    with pytest.raises(FileNotFoundError, match=r"parsing_bisenet.pth.*not found: .*missing.pth"):
        load_bisenet(tmp_path / "missing.pth")
