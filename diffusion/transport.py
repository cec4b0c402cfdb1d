"""Interpolants of REPA / REG (stochastic interpolants, SiT, Ma et al. 2024, in REPA's time direction).

Time runs from t=0 (data) to t=1 (noise): ``x_t = alpha_t x + sigma_t eps`` and the model
predicts the velocity ``v = d_alpha_t x + d_sigma_t eps`` (REPA ``loss.py``, ``SILoss``).

The codebases this repository reproduces use three conventions; this table is the one place
that lists them side by side. SiT's own transport (its three paths, three targets, ODE and SDE samplers and
likelihood) is ``diffusion/sit_transport.py`` and ``diffusion/sit_samplers.py``, in SiT's time; REPA and REG
train and sample SiT models with the maths of this module, and weights trained in SiT's time are read in
REPA's by ``models.sit.SiT(time_convention="sit")``: ``v(x, t) = -u(x, 1 - t)``.

=============  ==============================  ==========================  =====================
               DiT (``gaussian_diffusion``)    SiT (its ``transport/``)    REPA / REG (here)
=============  ==============================  ==========================  =====================
time           integer index 0..999,           float in [0, 1],            float in [0, 1],
               t=999 noise                     t=0 noise, t=1 data         t=0 data, t=1 noise
x_t            sqrt(abar) x0 + sqrt(1-abar)    alpha_t x1 + sigma_t x0     alpha_t x + sigma_t
               eps                             (x1 data, x0 noise),        eps, linear:
                                               linear: alpha=t             alpha=1-t, sigma=t
model output   eps (+ learned variance)        velocity x1 - x0            velocity eps - x
                                               = data - noise              = noise - data
guidance       3 of 4 eps channels,            3 of 4 velocity channels    all channels, inside
               every step                      (``forward_with_cfg``)      [guidance_low,
                                                                           guidance_high]
=============  ==============================  ==========================  =====================

All three use the null class ``num_classes`` (1000 on ImageNet) for the unconditional pass.
"""

from __future__ import annotations

import math

import torch

PATH_TYPES = ("linear", "cosine")
WEIGHTINGS = ("uniform", "lognormal")

Coefficient = torch.Tensor | float


def check_path_type(path_type: str) -> None:
    """Raise a one-line ValueError for a path REPA does not have."""
    if path_type not in PATH_TYPES:
        raise ValueError(f"unknown path_type {path_type!r}; use one of {', '.join(PATH_TYPES)}")


def interpolant(
    t: torch.Tensor, path_type: str = "linear"
) -> tuple[Coefficient, Coefficient, Coefficient, Coefficient]:
    """``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)`` of the path, elementwise in ``t`` (REPA ``SILoss.interpolant``).

    linear: alpha_t = 1 - t, sigma_t = t, d_alpha_t = -1, d_sigma_t = 1 (the derivatives are
    Python numbers, as in REPA, and broadcast against anything).
    cosine: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2), d_alpha_t = -pi/2 sin(pi t / 2),
    d_sigma_t = pi/2 cos(pi t / 2) (a variance-preserving path).
    """
    check_path_type(path_type)
    if path_type == "linear":
        return 1 - t, t, -1.0, 1.0
    angle = t * math.pi / 2  # same order of operations as REPA, so float results match bit for bit
    return torch.cos(angle), torch.sin(angle), -math.pi / 2 * torch.sin(angle), math.pi / 2 * torch.cos(angle)


def expand_t_like_x(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` of shape (), (N,) or (N, 1, ..., 1) reshaped to broadcast over ``x`` of shape (N, ...)."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(
    x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, path_type: str = "linear"
) -> torch.Tensor:
    """The noisy sample ``x_t = alpha_t x + sigma_t eps``; ``t`` per sample (see ``expand_t_like_x``)."""
    alpha_t, sigma_t, _, _ = interpolant(expand_t_like_x(t, x), path_type)
    return alpha_t * x + sigma_t * eps


def target_velocity(
    x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, path_type: str = "linear"
) -> torch.Tensor:
    """The training target ``v = d_alpha_t x + d_sigma_t eps`` (= eps - x on the linear path)."""
    _, _, d_alpha_t, d_sigma_t = interpolant(expand_t_like_x(t, x), path_type)
    return d_alpha_t * x + d_sigma_t * eps


# Predictions from a velocity. Solving x_t = alpha x + sigma eps, v = d_alpha x + d_sigma eps for
# (x, eps) divides by det = alpha d_sigma - sigma d_alpha, which is 1 on the linear path and pi/2 on
# the cosine path for every t: eps and x0 are well defined on all of [0, 1]. The score -eps/sigma_t is
# singular at t=0 (sigma_t = 0), where the data distribution has no density; the samplers never
# evaluate it there (the SDE grid stops at t=0.04).


def _det(
    t: torch.Tensor, path_type: str
) -> tuple[Coefficient, Coefficient, Coefficient, Coefficient, Coefficient]:
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = interpolant(t, path_type)
    return alpha_t, sigma_t, d_alpha_t, d_sigma_t, alpha_t * d_sigma_t - sigma_t * d_alpha_t


def eps_from_velocity(
    v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path_type: str = "linear"
) -> torch.Tensor:
    """Noise prediction ``eps = (alpha_t v - d_alpha_t x_t) / (alpha_t d_sigma_t - sigma_t d_alpha_t)``.

    linear: eps = x_t + (1 - t) v. Defined for every t in [0, 1] on both paths.
    """
    alpha_t, _, d_alpha_t, _, det = _det(expand_t_like_x(t, x_t), path_type)
    return (alpha_t * v - d_alpha_t * x_t) / det


def x0_from_velocity(
    v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path_type: str = "linear"
) -> torch.Tensor:
    """Data prediction ``x0 = (d_sigma_t x_t - sigma_t v) / (alpha_t d_sigma_t - sigma_t d_alpha_t)``.

    linear: x0 = x_t - t v. Defined for every t in [0, 1] on both paths.
    """
    _, sigma_t, _, d_sigma_t, det = _det(expand_t_like_x(t, x_t), path_type)
    return (d_sigma_t * x_t - sigma_t * v) / det


def score_from_velocity(
    v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path_type: str = "linear"
) -> torch.Tensor:
    """Score ``grad log p_t(x_t) = -eps / sigma_t`` of a velocity prediction.

    Equal to REPA's ``get_score_from_velocity``, ``((alpha/d_alpha) v - x_t) / (sigma^2 - (alpha/d_alpha)
    d_sigma sigma)``; linear: ``-(x_t + (1 - t) v) / t``. Singular at t = 0 (sigma_t = 0).
    """
    _, sigma_t, _, _ = interpolant(expand_t_like_x(t, x_t), path_type)
    return -eps_from_velocity(v, x_t, t, path_type) / sigma_t


# The reverse-time SDE of the samplers, from t=1 to t=0 (dt < 0, dW a Wiener process in reverse time):
#     dx = [v - 1/2 w_t score] dt + sqrt(w_t) dW,
# which has the same marginals as the probability-flow ODE dx = v dt for any w_t >= 0.


def diffusion_coefficient(t: torch.Tensor) -> torch.Tensor:
    """``w_t = 2 t``, the squared diffusion of REPA's and REG's ``euler_maruyama_sampler`` (``compute_diffusion``).

    github.com/sihyun-yu/REPA issue #52: the paper writes w_t = sigma_t = t and the authors call the code's 2t a typo.
    Read in the SDE above the two agree: the drift correction is 1/2 * 2t * score = sigma_t score on
    the linear path, which is SiT's ``diffusion_form="sigma"`` (drift v + w score, noise sqrt(2 w),
    w = sigma_t). Kept as 2t here so sampling reproduces the released numbers.
    """
    return 2 * t


def sde_drift(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path_type: str = "linear") -> torch.Tensor:
    """Reverse-SDE drift ``v - 1/2 w_t score`` (w_t = ``diffusion_coefficient``); linear: v + eps."""
    w_t = diffusion_coefficient(expand_t_like_x(t, x_t))
    return v - 0.5 * w_t * score_from_velocity(v, x_t, t, path_type)


def sample_time(
    n: int,
    weighting: str = "uniform",
    path_type: str = "linear",
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training times, shape (n, 1, 1, 1) like REPA ``SILoss``.

    uniform: t ~ U(0, 1). lognormal (EDM's noise levels): sigma = exp(z), z ~ N(0, 1), then
    t = sigma / (1 + sigma) on the linear path (so sigma_t / alpha_t = sigma; median t = 1/2) or
    t = (2 / pi) atan(sigma) on the cosine path (tan of the angle = sigma; median 1/2).

    Drawn on the CPU with ``generator`` (a CPU generator) or the global RNG, then moved to
    ``device``, as REPA does: a seeded run draws the same times as REPA's loss.
    """
    check_path_type(path_type)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    if weighting == "uniform":
        t = torch.rand((n, 1, 1, 1), generator=generator)
    else:
        sigma = torch.randn((n, 1, 1, 1), generator=generator).exp()
        t = sigma / (1 + sigma) if path_type == "linear" else 2 / math.pi * torch.atan(sigma)
    return t.to(device)
