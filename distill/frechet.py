"""Fréchet distance between Gaussian fits of features (Dowson & Landau 1982), on this project's own features.

``FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))``. The trace of the matrix square root is
taken from the eigenvalues of the symmetric ``C_1^(1/2) C_2 C_1^(1/2)``, which has the same spectrum
as ``C_1 C_2``: no complex ``sqrtm`` and no imaginary residue to discard. On the Fashion-MNIST
classifier's features this is FD-FMNIST; it is not comparable with Inception-based FID.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .student_file import write_safetensors_atomic


def gaussian_fit(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features [N, D]."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def trace_sqrt_product(cov_1: np.ndarray, cov_2: np.ndarray) -> float:
    """tr((C_1 C_2)^(1/2)) = sum of sqrt(eig(C_1^(1/2) C_2 C_1^(1/2)))."""
    root = psd_sqrt(cov_1)
    values = np.linalg.eigvalsh(root @ cov_2 @ root)
    return float(np.sqrt(values.clip(min=0)).sum())


def frechet_distance(mu_1: np.ndarray, cov_1: np.ndarray, mu_2: np.ndarray, cov_2: np.ndarray) -> float:
    """||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr((C_1 C_2)^(1/2)) (Dowson & Landau 1982)."""
    mu_1, mu_2 = np.asarray(mu_1, np.float64), np.asarray(mu_2, np.float64)
    cov_1, cov_2 = np.asarray(cov_1, np.float64), np.asarray(cov_2, np.float64)
    mean_term = float(((mu_1 - mu_2) ** 2).sum())
    return mean_term + float(np.trace(cov_1) + np.trace(cov_2)) - 2 * trace_sqrt_product(cov_1, cov_2)


def save_stats(path: str | Path, mu: np.ndarray, cov: np.ndarray, metadata: dict[str, str]) -> None:
    """Write a Gaussian fit (float64 ``mu`` and ``cov``) as safetensors, atomically."""
    tensors = {"mu": torch.from_numpy(np.asarray(mu, np.float64)), "cov": torch.from_numpy(np.asarray(cov, np.float64))}
    write_safetensors_atomic(path, tensors, metadata)


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, cov) from a file written by ``save_stats``."""
    tensors = load_file(str(path))
    return tensors["mu"].numpy(), tensors["cov"].numpy()
