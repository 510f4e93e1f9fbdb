"""Fréchet distance on Gaussians whose distance is known in closed form."""

import numpy as np
import pytest
from onestep.distill.frechet import frechet_distance, gaussian_fit, load_stats, psd_sqrt, save_stats


def test_one_dimension_is_mean_gap_squared_plus_std_gap_squared():
    # N(1, 2^2) vs N(-2, 5^2): (1 + 2)^2 + (2 - 5)^2 = 18
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[25.0]]) == pytest.approx(18.0)


def test_diagonal_covariances_sum_over_dimensions():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance([1.0, 0, 0], np.diag(a), [0, 0, 0], np.diag(b)) == pytest.approx(expected)


def test_non_commuting_covariances_match_the_two_by_two_closed_form():
    # For 2x2 C1 C2 with eigenvalues l1, l2 > 0: sqrt(l1) + sqrt(l2) = sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2)).
    c1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    c2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    trace_sqrt = np.sqrt(np.trace(c1 @ c2) + 2 * np.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
    assert frechet_distance([0, 0], c1, [0, 0], c2) == pytest.approx(expected, rel=1e-10)


def test_identical_gaussians_are_at_distance_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(8, 8))
    c1, c2 = m @ m.T, np.diag(rng.uniform(0.5, 2, 8))
    assert frechet_distance(np.ones(8), c1, np.ones(8), c1) == pytest.approx(0.0, abs=1e-9)
    there = frechet_distance(np.zeros(8), c1, np.ones(8), c2)
    assert there == pytest.approx(frechet_distance(np.ones(8), c2, np.zeros(8), c1))


def test_psd_sqrt_squares_back():
    m = np.random.default_rng(1).normal(size=(5, 5))
    c = m @ m.T
    np.testing.assert_allclose(psd_sqrt(c) @ psd_sqrt(c), c, atol=1e-10)


def test_gaussian_fit_and_stats_file_round_trip(tmp_path):
    features = np.random.default_rng(2).normal(size=(500, 3)) * [1.0, 2.0, 3.0]
    mu, cov = gaussian_fit(features)
    np.testing.assert_allclose(cov, np.cov(features, rowvar=False))
    save_stats(tmp_path / "stats.safetensors", mu, cov, {"onestep.images": "synthetic"})
    mu_back, cov_back = load_stats(tmp_path / "stats.safetensors")
    np.testing.assert_array_equal(mu_back, mu)
    np.testing.assert_array_equal(cov_back, cov)
