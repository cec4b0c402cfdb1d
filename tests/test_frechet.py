"""Fréchet distance against closed forms (ADM evaluator semantics, perf-eval-style.md 2.1)."""

import numpy as np
import pytest

from evaluations.frechet import feature_statistics, frechet_distance


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_commuting_covariances_match_closed_form():
    # Same eigenvectors: FD = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q = _rotation(d, 1)  # rotated together: still commuting, no longer diagonal
    rotated = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_one_dimensional_gaussians():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    fd = frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    assert fd == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_non_commuting_two_by_two_matches_eigenvalue_formula():
    # For 2x2, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))) (eigenvalues of S1 S2 are >= 0).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 3.0]])
    product = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == pytest.approx(expected, rel=1e-10)


def test_identical_statistics_give_zero():
    features = np.random.default_rng(2).normal(size=(500, 32)) @ np.random.default_rng(3).normal(size=(32, 32))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_singular_product_retries_with_eps_and_warns():
    # Rank-deficient covariances make scipy's Schur sqrtm return NaN; the eps * I retry recovers.
    # With S2 = u u^T the only non-zero eigenvalue of S1 S2 is u^T S1 u, so tr sqrt = sqrt(u^T S1 u).
    s1 = np.array([[5.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    u = np.ones(3)
    s2 = np.outer(u, u)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(u @ s1 @ u)
    with pytest.warns(RuntimeWarning, match="singular product"):
        fd = frechet_distance(np.zeros(3), s1, np.zeros(3), s2)
    assert fd == pytest.approx(expected, abs=2e-3)


def test_few_samples_give_finite_distance():
    # Fewer samples than dimensions: both covariances singular, the result must stay finite.
    rng = np.random.default_rng(4)
    stats1 = feature_statistics(rng.normal(size=(10, 32)))
    stats2 = feature_statistics(rng.normal(size=(10, 32)) + 1.0)
    assert np.isfinite(frechet_distance(*stats1, *stats2))


def test_complex_square_root_raises():
    # Not a covariance (negative eigenvalue): sqrt(S1 S2) has an imaginary diagonal.
    with pytest.raises(ValueError, match="Imaginary component"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


def test_bad_statistics_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]], dtype=np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 2.0])
    # by hand: deviations (-2, 0), (0, -2), (2, 2); divide by N - 1 = 2
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])
