"""One denoiser interface: every model of the repository read on one noise scale, for every sampler.

All processes here are one Gaussian path up to a change of time and of scale (Karras et al. 2022,
EDM, sec. 2): ``x = a (x0 + sigma eps)`` with ``sigma`` = noise / signal.

================  ======================================  ===========================================
process           scale a                                 sigma
================  ======================================  ===========================================
DDPM (abar_t)     sqrt(abar_t) = 1 / sqrt(1 + sigma^2)    sqrt((1 - abar_t) / abar_t)
linear path (s)   1 - s                                   s / (1 - s);  s = sigma / (1 + sigma)
cosine path (s)   cos(pi s / 2)                           tan(pi s / 2)
EDM               1                                       sigma
================  ======================================  ===========================================

An adapter (``Denoiser``) is called on the variance-preserving input
``x_vp = (x0 + sigma eps) / sqrt(1 + sigma^2)`` (finite at sigma = inf, where it is eps) and returns a
``Prediction``: the model's x0 and eps, from which v and the score follow (``Prediction``). Each adapter
feeds its model what the model was trained on: a DDPM model at the fractional step tau whose
sigma, interpolated in log sigma on its table, is the one asked for (clamped to the table's range);
a flow model at s(sigma) on ``sqrt(alpha_s^2 + sigma_s^2) x_vp``. Both are differentiable in ``x``
and in a per-sample ``sigma``.

The samplers keep their native state and step (``GaussianDiffusion`` on integer DDPM steps, REPA's
samplers on the flow time); ``eps_model`` and ``velocity_model`` hand them a callable in their own
parameterisation. When the model's process is the sampler's, that callable is the model itself, so
native sampling is unchanged to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .network import PREDICTIONS, contract
from .transport import check_path_type, eps_from_velocity, expand_t_like_x, interpolant, x0_from_velocity


@dataclass
class Prediction:
    """A denoiser's answer at noise level ``sigma`` (shape (N,)): ``x0`` and ``eps`` with
    ``x0 + sigma eps`` the (EDM-scale) input. ``extra`` holds what the model returns beside it
    (DiT's learned-variance channels); ``token`` the same answer for REG's class token."""

    x0: torch.Tensor
    eps: torch.Tensor
    sigma: torch.Tensor
    extra: torch.Tensor | None = None
    token: Prediction | None = None

    def velocity(self, t: torch.Tensor, path_type: str = "linear") -> torch.Tensor:
        """``v = d_alpha_t x0 + d_sigma_t eps`` on an interpolant path at its time ``t`` (linear: eps - x0)."""
        _, _, d_alpha, d_sigma = interpolant(expand_t_like_x(t, self.x0), path_type)
        return d_alpha * self.x0 + d_sigma * self.eps

    def score(self) -> torch.Tensor:
        """``grad log p(x_e)`` of the EDM-scale input ``x_e = x0 + sigma eps``: ``-eps / sigma``."""
        return -self.eps / expand_t_like_x(self.sigma, self.eps)


def flow_time(sigma: torch.Tensor, path_type: str) -> torch.Tensor:
    """The interpolant time s of noise level sigma: ``sigma / (1 + sigma)`` (linear; 1 at sigma = inf),
    ``2 / pi * atan(sigma)`` (cosine)."""
    check_path_type(path_type)
    if path_type == "linear":
        return 1 / (1 + 1 / sigma)
    return 2 / math.pi * torch.atan(sigma)


def flow_sigma(t: torch.Tensor, path_type: str) -> torch.Tensor:
    """Inverse of ``flow_time``: ``t / (1 - t)`` (linear) or ``tan(pi t / 2)`` (cosine); inf at t = 1."""
    alpha, sigma, _, _ = interpolant(t, path_type)
    return sigma / alpha


def flow_vp_scale(t: torch.Tensor, path_type: str) -> torch.Tensor:
    """``sqrt(alpha_t^2 + sigma_t^2)``: ``x_t = flow_vp_scale * x_vp`` (1 on the cosine path)."""
    alpha, sigma, _, _ = interpolant(t, path_type)
    return torch.sqrt(alpha**2 + sigma**2)


def noised(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``(x0 + sigma eps) / sqrt(1 + sigma^2)`` per sample, finite at sigma = inf (where it is eps)."""
    s = expand_t_like_x(sigma.to(torch.float64), x0)
    signal, noise = 1 / torch.sqrt(1 + s**2), 1 / torch.sqrt(1 + s**-2)
    return (signal * x0.to(torch.float64) + noise * eps.to(torch.float64)).to(x0.dtype)


def ddpm_sigmas(alphas_cumprod) -> torch.Tensor:
    """sigma of every DDPM step, float64, increasing: ``sqrt((1 - abar_t) / abar_t)``."""
    abar = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)
    return torch.sqrt((1 - abar) / abar)


class Denoiser:
    """A model read as ``Prediction`` at ``(x_vp, sigma)``; ``sigma_min`` / ``sigma_max`` bound where
    the model was trained (beyond them its input is clamped)."""

    prediction: str
    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __init__(self, model):
        self.model = model

    def __call__(self, x_vp: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, *, x0_dtype=None,
                 **kwargs) -> Prediction:
        """``x0_dtype``: the dtype of ``Prediction.x0`` (default ``x_vp``'s); x0 is computed in float64 and
        can be kept there (DMD2 reads a DDPM teacher's x0 in float64)."""
        raise NotImplementedError

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents out of the model's own normalisation, for the decoder. A model that owns a ``bn``
        (REPA-E's ``BatchNorm2d(affine=False)`` of the latents) samples normalised latents; they are
        ``z * sqrt(running_var) + running_mean``, as REPA-E decodes (``z / latents_scale +
        latents_bias``, without BatchNorm's eps). Other models return ``z``."""
        bn = contract(self.model).latent_norm
        if bn is None:
            return z
        shape = (1, -1, *([1] * (z.ndim - 2)))
        return (z * bn.running_var.sqrt().view(shape) + bn.running_mean.view(shape)).to(z.dtype)


class DDPMDenoiser(Denoiser):
    """An eps-predicting DDPM model (DiT, with or without learned sigma; the U-Net) on its abar table.

    At sigma the model runs at the fractional step tau where the table's log sigma, linearly
    interpolated, equals log sigma (clamped to the first and last step); ``x0 = sqrt(1 + sigma^2) x_vp
    - sigma eps`` with the clamped sigma. Learned-variance channels are returned as ``extra``.
    """

    prediction = "eps"

    def __init__(self, model, alphas_cumprod):
        super().__init__(model)
        self.sigmas = ddpm_sigmas(alphas_cumprod)
        self.log_sigmas = self.sigmas.log()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional step tau in [0, T - 1] of noise level sigma (float64)."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp(self.sigma_min, self.sigma_max).log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(log_sigmas) - 2)
        frac = (log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])
        return low + frac.clamp(0, 1)

    def __call__(self, x_vp, sigma, y, *, x0_dtype=None, **kwargs):
        sigma = sigma.to(torch.float64).clamp(self.sigma_min, self.sigma_max)
        out = self.model(x_vp, self.timestep(sigma).to(torch.float32), y=y, **kwargs)
        channels = x_vp.shape[1]
        eps, extra = out[:, :channels], out[:, channels:] if out.shape[1] > channels else None
        s = expand_t_like_x(sigma, x_vp)
        x0 = torch.sqrt(1 + s**2) * x_vp.to(torch.float64) - s * eps.to(torch.float64)
        return Prediction(x0.to(x0_dtype or x_vp.dtype), eps, sigma, extra)


class FlowDenoiser(Denoiser):
    """A velocity-predicting interpolant model (SiT / REPA / REG, REPA's time: t=0 data, t=1 noise) on
    ``path_type``; eps and x0 from v by ``transport.eps_from_velocity`` / ``x0_from_velocity``."""

    prediction = "velocity"

    def __init__(self, model, path_type: str = "linear"):
        super().__init__(model)
        check_path_type(path_type)
        self.path_type = path_type

    def __call__(self, x_vp, sigma, y, cls_token=None, *, x0_dtype=None, **kwargs):
        """``cls_token``: REG's class token on the same variance-preserving scale as ``x_vp``; its
        answer is ``Prediction.token``."""
        sigma = sigma.to(torch.float64)
        t = flow_time(sigma, self.path_type)
        scale = flow_vp_scale(t, self.path_type)
        x_t = expand_t_like_x(scale, x_vp) * x_vp.to(torch.float64)
        if cls_token is not None:
            cls_t = expand_t_like_x(scale, cls_token) * cls_token.to(torch.float64)
            kwargs["cls_token"] = cls_t.to(cls_token.dtype)
        out = self.model(x_t.to(x_vp.dtype), t.to(x_vp.dtype), y=y, **kwargs)
        pred = self._from_velocity(out[0], x_t, t, sigma, x_vp.dtype, x0_dtype)
        if cls_token is not None:
            pred.token = self._from_velocity(out[2], cls_t, t, sigma, cls_token.dtype)
        return pred

    def _from_velocity(self, v, x_t, t, sigma, dtype, x0_dtype=None) -> Prediction:
        v = v.to(torch.float64)
        eps = eps_from_velocity(v, x_t, t, self.path_type)
        x0 = x0_from_velocity(v, x_t, t, self.path_type)
        return Prediction(x0.to(x0_dtype or dtype), eps.to(dtype), sigma)


class EDMDenoiser(Denoiser):
    """An x0-predicting EDM network (``models.edm_unet.EDMPrecond``: ``net(x, sigma, class_labels)`` is
    D(x; sigma) on the EDM scale ``x = x0 + sigma eps``), read on ``x = sqrt(1 + sigma^2) x_vp``; eps is
    ``(x - D) / sigma``. Its range is EDM's sampling range, [0.002, 80] (``edm_sampler``'s defaults)."""

    prediction = "x0"
    sigma_min, sigma_max = 0.002, 80.0

    def __call__(self, x_vp, sigma, y, *, x0_dtype=None, **kwargs):
        sigma = sigma.to(torch.float64).clamp(self.sigma_min, self.sigma_max)
        s = expand_t_like_x(sigma, x_vp)
        x = torch.sqrt(1 + s**2) * x_vp.to(torch.float64)
        x0 = self.model(x.to(x_vp.dtype), sigma.to(x_vp.dtype), y, **kwargs).to(torch.float64)
        return Prediction(x0.to(x0_dtype or x_vp.dtype), ((x - x0) / s).to(x_vp.dtype), sigma)


def denoiser_for(model, alphas_cumprod=None, path_type: str = "linear") -> Denoiser:
    """The adapter of a model by what it declares it predicts (``model.prediction``): ``"eps"`` models
    need their training ``alphas_cumprod``, ``"velocity"`` models their ``path_type``; ``"x0"`` is EDM's."""
    prediction = contract(model).prediction
    if prediction not in PREDICTIONS:
        raise ValueError(f"{type(model).__name__} declares no prediction (its .prediction must be one of "
                         f"{', '.join(PREDICTIONS)}), so no sampler can read it")
    if prediction == "eps":
        if alphas_cumprod is None:
            raise ValueError("an eps model needs the alphas_cumprod table it was trained with")
        return DDPMDenoiser(model, alphas_cumprod)
    if prediction == "x0":
        return EDMDenoiser(model)
    return FlowDenoiser(model, path_type)


def eps_model(denoiser: Denoiser, alphas_cumprod):
    """``model(x_t, t, y=...)`` for ``GaussianDiffusion`` loops over the base table ``alphas_cumprod``
    (integer steps t): the model itself for a DDPM model, else its eps at each step's sigma; with
    ``cls_token=`` (REG), the pair of eps of the latents and of the token."""
    if isinstance(denoiser, DDPMDenoiser):
        return denoiser.model
    sigmas = ddpm_sigmas(alphas_cumprod)

    def model(x, t, y, cls_token=None, **kwargs):
        if cls_token is not None:  # REG's; other models take no such argument
            kwargs["cls_token"] = cls_token
        pred = denoiser(x, sigmas.to(x.device)[t], y, **kwargs)
        return pred.eps.to(x.dtype) if cls_token is None else (pred.eps.to(x.dtype), pred.token.eps)

    return model


def velocity_model(denoiser: Denoiser, path_type: str = "linear"):
    """``model(x_t, t, y=...) -> (v, zs)`` for REPA's samplers on ``path_type``: the model itself for a
    flow model (REPA calls it whatever the path), else the velocity of its prediction."""
    if isinstance(denoiser, FlowDenoiser):
        return denoiser.model

    def model(x, t, y, **kwargs):
        t64 = t.to(torch.float64)
        x_vp = x.to(torch.float64) / expand_t_like_x(flow_vp_scale(t64, path_type), x)
        pred = denoiser(x_vp.to(x.dtype), flow_sigma(t64, path_type), y, **kwargs)
        return pred.velocity(t64, path_type).to(x.dtype), []

    return model
