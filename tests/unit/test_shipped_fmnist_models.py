"""The Fashion-MNIST teacher, classifier and reference statistics that ship in models/fmnist/ load and agree."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from onestep.distill.classifier import FMNISTClassifier
from onestep.distill.frechet import load_stats
from onestep.distill.network_file import load_network, read_info
from onestep.distill.networks import EDMDenoiser
from safetensors import safe_open

MODELS = Path(__file__).resolve().parents[2] / "models" / "fmnist"
MAX_BYTES = 20 * 2**20


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def test_teacher_loads_from_safetensors_and_denoises_a_batch():
    path = MODELS / "teacher.safetensors"
    assert path.stat().st_size <= MAX_BYTES
    teacher = load_network(path)
    assert isinstance(teacher, EDMDenoiser)
    assert read_info(path)["parameters"] == sum(p.numel() for p in teacher.parameters())
    x = torch.randn(2, 1, 28, 28)
    out = teacher(x, torch.tensor([2.5, 0.1]), torch.tensor([0, 9]))
    assert out.shape == x.shape and out.isfinite().all()


@torch.no_grad()
def test_classifier_features_match_the_reference_statistics():
    path = MODELS / "classifier.safetensors"
    assert path.stat().st_size <= MAX_BYTES
    classifier = load_network(path)
    assert isinstance(classifier, FMNISTClassifier)
    assert read_info(path)["test_accuracy"] > 0.85
    mu, cov = load_stats(MODELS / "reference_stats.safetensors")
    features = classifier.features(torch.randn(3, 1, 28, 28))
    assert features.shape == (3, mu.shape[0]) and cov.shape == (mu.shape[0],) * 2
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-8


def test_reference_statistics_name_the_shipped_classifier():
    with safe_open(str(MODELS / "reference_stats.safetensors"), framework="pt") as handle:
        recorded = handle.metadata()["onestep.classifier_sha256"]
    assert recorded == hashlib.sha256((MODELS / "classifier.safetensors").read_bytes()).hexdigest()
