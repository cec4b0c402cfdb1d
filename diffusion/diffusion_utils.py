"""Gaussian KL and the discretized Gaussian decoder likelihood used by the variational bound
(elementwise, in nats; callers divide by ln 2 for bits), and the coefficient-table lookup."""

from __future__ import annotations

import math

import numpy as np
import torch


def gather(table: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
    """table[t] as float32, shaped to broadcast against ``shape`` (t indexes the batch dimension).

    The float64 table is cast to float32 before it meets any tensor, as the original does,
    which is what makes results match it to the bit.
    """
    picked = torch.from_numpy(table).to(device=t.device, dtype=torch.float32)[t]
    return picked.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) per element, in nats.

    The closed form used for the L_{t-1} terms of the bound (Ho et al. 2020, eq 5).
    Arguments broadcast; any of them may be a Python number as long as one is a tensor.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    # torch.exp needs tensors, so scalar log-variances become tensors like `ref`.
    logvar1, logvar2 = (
        v if isinstance(v, torch.Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) through the tanh approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) of the discrete decoder p(x_0 | x_1) (Ho et al. 2020, eq 13), in nats.

    ``x`` is assumed to be 8-bit data scaled to [-1, 1]: each value owns the bin
    ``x +- 1/255``, and the two edge bins extend to -inf (x = -1) and +inf (x = 1).
    ``log_scales`` is the log standard deviation. Probabilities are floored at 1e-12.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"log_scales {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_survival_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_bin))
