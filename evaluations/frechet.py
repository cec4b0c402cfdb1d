"""Fréchet distance between two Gaussians, with the ADM evaluator's semantics.

``d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``
(Fréchet 1957; Dowson & Landau 1982; FID, Heusel et al., 2017). The steps follow
``frechet_distance`` in ADM's ``evaluations/evaluator.py`` (itself from TTUR):
float64 statistics; ``scipy.linalg.sqrtm(sigma1 @ sigma2)``; if that is not finite,
warn and retry with ``eps * I`` added to both covariances; if the result is complex
with a diagonal imaginary part beyond 1e-3, raise ``ValueError``, else keep the real
part.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)``, the matrix ADM takes from ``sqrtm(a, disp=False)``.

    ADM passes ``disp=False`` only to get the error estimate back instead of a printed
    message, and then ignores it. SciPy 1.16 deprecated ``disp`` (removed in 1.18), so
    the square root is taken without it; the singular-matrix ``LinAlgWarning`` is
    silenced because the finiteness check below is what handles that case.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _check(name: str, value, ndim: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf; statistics need at least two finite feature vectors")
    return value


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (ADM semantics, float64)."""
    mu1, mu2 = _check("mu1", mu1, 1), _check("mu2", mu2, 1)
    sigma1, sigma2 = _check("sigma1", sigma1, 2), _check("sigma2", sigma2, 2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2

    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))

    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(
                f"Imaginary component {m}: sqrt(sigma1 @ sigma2) is complex, so the covariances are "
                "not valid (symmetric positive semi-definite) statistics"
            )
        covmean = covmean.real

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of ``(N, D)`` features in float64: ``np.mean`` and unbiased ``np.cov(rowvar=False)``."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"feature_statistics needs an (N, D) array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)
