"""The Fashion-MNIST teacher network (EDM preconditioning), the classifier, and their safetensors files."""

import pytest
import torch
from onestep.distill.classifier import FMNISTClassifier
from onestep.distill.network_file import load_network, read_info, save_network
from onestep.distill.networks import EDMDenoiser

TINY = dict(channels=(8, 16), emb_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def net():
    """A tiny teacher whose zero-initialised layers are randomised, so that F != 0 and depends on the label."""
    torch.manual_seed(0)
    net = EDMDenoiser(**TINY).eval()
    for p in net.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    return net


@torch.no_grad()
def test_output_has_the_input_shape_and_sigma_may_be_any_per_sample_shape(net):
    x = torch.randn(3, 1, 28, 28)
    labels = torch.tensor([0, 4, 9])
    out = net(x, torch.full((3, 1, 1, 1), 0.7), labels)
    assert out.shape == x.shape
    torch.testing.assert_close(net(x, torch.full((3,), 0.7), labels), out)
    torch.testing.assert_close(net(x, 0.7, labels), out)


@torch.no_grad()
def test_preconditioning_follows_edm_table_1(net):
    x, sigma, labels = torch.randn(4, 1, 28, 28), torch.tensor([0.01, 0.5, 2.0, 40.0]), torch.tensor([1, 2, 3, 4])
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = 0.25 / (s**2 + 0.25)
    c_out = s * 0.5 / (s**2 + 0.25).sqrt()
    c_in = 1 / (s**2 + 0.25).sqrt()
    expected = c_skip * x + c_out * net.unet(c_in * x, sigma.log() / 4, labels)
    torch.testing.assert_close(net(x, sigma, labels), expected)


@torch.no_grad()
def test_denoiser_is_the_identity_at_tiny_sigma(net):
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(net(x, 1e-5, torch.tensor([3, 7])), x, rtol=0, atol=1e-4)


@torch.no_grad()
def test_class_label_changes_the_output_and_none_is_the_null_class(net):
    x = torch.randn(2, 1, 28, 28)
    a = net(x, 1.0, torch.tensor([0, 0]))
    b = net(x, 1.0, torch.tensor([5, 5]))
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(net(x, 1.0, None), net(x, 1.0, torch.tensor([10, 10])))


@torch.no_grad()
def test_network_files_round_trip_with_config_and_info(tmp_path, net):
    classifier = FMNISTClassifier(feature_dim=32).eval()
    x = torch.randn(2, 1, 28, 28)
    for module, call in ((net, lambda m: m(x, 0.5, torch.tensor([1, 2]))), (classifier, lambda m: m.features(x))):
        path = tmp_path / f"{type(module).__name__}.safetensors"
        save_network(path, module, {"steps": 12})
        loaded = load_network(path)
        assert type(loaded) is type(module)
        assert read_info(path)["steps"] == 12
        torch.testing.assert_close(call(loaded), call(module))


def test_unknown_network_kind_and_missing_file_are_refused(tmp_path):
    from onestep.distill.student_file import write_safetensors_atomic

    path = tmp_path / "other.safetensors"
    write_safetensors_atomic(path, {"w": torch.zeros(1)}, {"onestep.network": '"resnet"'})
    with pytest.raises(ValueError, match="resnet"):
        load_network(path)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_network(tmp_path / "absent.safetensors")
