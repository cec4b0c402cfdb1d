"""SiT's transport (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
Interpolant Transformers", Sec. 2-3; willisma/SiT ``transport/``), in SiT's time: t=0 is noise, t=1 data.

    x_t = alpha_t x1 + sigma_t x0,   x1 the data, x0 ~ N(0, I),   u_t = d_alpha_t x1 + d_sigma_t x0.

Three paths (``Linear``: alpha_t = t, sigma_t = 1 - t; ``GVP``: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2);
``VP``: the variance-preserving SDE's path with beta from ``sigma_min`` to ``sigma_max``), three model targets
(``velocity`` u_t, ``score`` grad log p_t, ``noise`` x0) and three loss weights (none, ``velocity`` (g / sigma)^2,
``likelihood`` g / sigma^2, with g the probability-flow drift's variance term). Every prediction reads as the
probability-flow velocity ``v(x, t) = -f_t(x) + g_t score(x, t)`` (``Path.drift_terms``), so any target samples
with the samplers of ``diffusion/sit_samplers.py``. REPA's and REG's interpolants are ``diffusion/transport.py``,
in the opposite time direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion.transport import expand_t_like_x

PATH_TYPES = ("Linear", "GVP", "VP")
PREDICTIONS = ("velocity", "score", "noise")
LOSS_WEIGHTS = (None, "velocity", "likelihood")
SBDM_EPS = 1e-3  # where the SBDM-form SDE of a velocity model starts (SiT's eps of score and noise models)
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")


class LinearPath:
    """alpha_t = t, sigma_t = 1 - t (SiT's ``ICPlan``). Coefficients are ``(value, derivative)`` pairs."""

    name = "Linear"

    def alpha(self, t: torch.Tensor):
        return t, 1

    def sigma(self, t: torch.Tensor):
        return 1 - t, -1

    def alpha_ratio(self, t: torch.Tensor):
        """d_alpha_t / alpha_t."""
        return 1 / t

    def drift_terms(self, x: torch.Tensor, t: torch.Tensor):
        """``(f, g)`` of the probability-flow velocity ``v = -f + g * score``: f = -(d_alpha/alpha) x,
        g = (d_alpha/alpha) sigma^2 - sigma d_sigma (SiT Sec. 2.3)."""
        t = expand_t_like_x(t, x)
        ratio = self.alpha_ratio(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return -ratio * x, ratio * sigma_t**2 - sigma_t * d_sigma_t

    def diffusion(self, x: torch.Tensor, t: torch.Tensor, form: str = "SBDM", norm: float = 1.0):
        """w_t of the sampling SDE ``dx = [v + w_t score] dt + sqrt(2 w_t) dW`` (SiT Eq. 8): ``SBDM`` is g (the
        score-based diffusion model's own), ``sigma`` sigma_t, ``linear`` 1 - t, ``decreasing``
        (norm cos(pi t) + 1)^2 / 4, ``increasing-decreasing`` sin^2(pi t), ``constant`` 1; all times ``norm``
        except ``decreasing``, where it scales the cosine."""
        t = expand_t_like_x(t, x)
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "SBDM":
            return norm * self.drift_terms(x, t)[1]
        if form == "sigma":
            return norm * self.sigma(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        if form == "increasing-decreasing":
            return norm * torch.sin(math.pi * t) ** 2
        raise ValueError(f"unknown diffusion form {form!r}; use one of {', '.join(DIFFUSION_FORMS)}")

    def score_from_velocity(self, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad log p_t = ((alpha/d_alpha) v - x) / (sigma^2 - (alpha/d_alpha) d_sigma sigma)."""
        t = expand_t_like_x(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        reverse_ratio = alpha_t / d_alpha_t
        return (reverse_ratio * v - x) / (sigma_t**2 - reverse_ratio * d_sigma_t * sigma_t)

    def plan(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
        """``(x_t, u_t)`` for noise ``x0`` and data ``x1``."""
        t = expand_t_like_x(t, x1)
        (alpha_t, d_alpha_t), (sigma_t, d_sigma_t) = self.alpha(t), self.sigma(t)
        return alpha_t * x1 + sigma_t * x0, d_alpha_t * x1 + d_sigma_t * x0


class GVPPath(LinearPath):
    """The generalised variance-preserving path alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    name = "GVP"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def alpha_ratio(self, t):
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(LinearPath):
    """The VP SDE's path (Song et al. 2021) with beta(s) linear from ``sigma_min`` to ``sigma_max`` in SiT's
    time: log alpha_t = -(1 - t)^2 (sigma_max - sigma_min) / 4 - (1 - t) sigma_min / 2, sigma_t^2 = 1 - alpha_t^2;
    f = -beta_t x / 2 and g = beta_t / 2 with beta_t = sigma_min + (1 - t)(sigma_max - sigma_min)."""

    name = "VP"

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def log_mean(self, t):
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def d_log_mean(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t):
        alpha_t = torch.exp(self.log_mean(t))
        return alpha_t, alpha_t * self.d_log_mean(t)

    def sigma(self, t):
        alpha_sq = torch.exp(2 * self.log_mean(t))
        sigma_t = torch.sqrt(1 - alpha_sq)
        return sigma_t, alpha_sq * (2 * self.d_log_mean(t)) / (-2 * sigma_t)

    def alpha_ratio(self, t):
        return self.d_log_mean(t)

    def drift_terms(self, x, t):
        t = expand_t_like_x(t, x)
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


PATHS = {"Linear": LinearPath, "GVP": GVPPath, "VP": VPPath}


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


@dataclass(frozen=True)
class Transport:
    """A path, the model's target and the loss weight, and the ends of time kept away from singular points:
    ``train_eps`` for training times, ``sample_eps`` for sampling (``create_transport`` gives SiT's defaults)."""

    path: LinearPath
    prediction: str = "velocity"
    loss_weight: str | None = None
    train_eps: float = 0.0
    sample_eps: float = 0.0

    def interval(self, *, sde: bool = False, eval: bool = False, reverse: bool = False, diffusion_form: str = "SBDM",
                 last_step_size: float = 0.0) -> tuple[float, float]:
        """``(t0, t1)``: the time interval of training, the ODE or the SDE. The Linear and GVP paths start at
        ``eps`` for score and noise targets (their drift is singular at t=0) and for the SBDM-form SDE (at
        ``SBDM_EPS`` when eps is 0, where SiT divides by t=0); every path stops ``eps`` short of t=1, or
        ``last_step_size`` short for an SDE with a last step."""
        eps = self.sample_eps if eval else self.train_eps
        t0, t1 = 0.0, 1.0
        end = 1 - eps if not sde or last_step_size == 0 else 1 - last_step_size
        if isinstance(self.path, VPPath):
            t1 = end
        elif self.prediction != "velocity" or sde:
            t0 = eps if self.prediction != "velocity" else 0.0
            if sde and diffusion_form == "SBDM":  # g is infinite at t=0; SiT starts there with a velocity model
                t0 = eps or SBDM_EPS
            t1 = end
        return (1 - t0, 1 - t1) if reverse else (t0, t1)

    def training_losses(self, model, x1: torch.Tensor, model_kwargs: dict | None = None) -> dict:
        """SiT's loss on data ``x1``: x0 ~ N(0, I), then t ~ U[t0, t1] drawn on the CPU (SiT's order of draws).
        velocity: |v_theta - u_t|^2; noise: w |eps_theta - x0|^2; score: w |sigma_t s_theta + x0|^2."""
        x0 = torch.randn_like(x1)
        t0, t1 = self.interval()
        t = (torch.rand((x1.shape[0],)) * (t1 - t0) + t0).to(x1)
        x_t, u_t = self.path.plan(t, x0, x1)
        output = model(x_t, t, **(model_kwargs or {}))
        if self.prediction == "velocity":
            return {"loss": mean_flat((output - u_t) ** 2), "pred": output}
        _, g = self.path.drift_terms(x_t, t)
        sigma_t, _ = self.path.sigma(expand_t_like_x(t, x_t))
        weight = {None: 1, "velocity": (g / sigma_t) ** 2, "likelihood": g / sigma_t**2}[self.loss_weight]
        error = output - x0 if self.prediction == "noise" else output * sigma_t + x0
        return {"loss": mean_flat(weight * error**2), "pred": output}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, model, **model_kwargs) -> torch.Tensor:
        """The probability-flow velocity of any target: the model's own for velocity, -f + g score otherwise."""
        output = model(x, t, **model_kwargs)
        if self.prediction == "velocity":
            return output
        f, g = self.path.drift_terms(x, t)
        if self.prediction == "noise":
            output = output / -self.path.sigma(expand_t_like_x(t, x))[0]
        return -f + g * output

    def score(self, x: torch.Tensor, t: torch.Tensor, model, **model_kwargs) -> torch.Tensor:
        """grad log p_t(x) of any target."""
        output = model(x, t, **model_kwargs)
        if self.prediction == "noise":
            return output / -self.path.sigma(expand_t_like_x(t, x))[0]
        if self.prediction == "score":
            return output
        return self.path.score_from_velocity(output, x, t)


def create_transport(path_type: str = "Linear", prediction: str = "velocity", loss_weight: str | None = None,
                     train_eps: float | None = None, sample_eps: float | None = None) -> Transport:
    """SiT's ``create_transport``: the VP path keeps t in [1e-5, 1 - 1e-5] for training and [0, 1 - 1e-3] for
    sampling; score and noise targets on the Linear and GVP paths in [1e-3, 1 - 1e-3]; velocity on those
    two uses all of [0, 1] (eps 0). A given ``train_eps`` or ``sample_eps`` wins; one given alone leaves the
    other at its default (in SiT, ``--train-eps`` alone leaves the sampling eps undefined)."""
    if path_type not in PATHS:
        raise ValueError(f"unknown --path-type {path_type!r}; SiT's paths are {', '.join(PATH_TYPES)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown --prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    if loss_weight not in LOSS_WEIGHTS:
        raise ValueError(f"unknown --loss-weight {loss_weight!r}; use None, velocity or likelihood")
    if path_type == "VP":
        defaults = (1e-5, 1e-3)
    elif prediction != "velocity":
        defaults = (1e-3, 1e-3)
    else:
        defaults = (0.0, 0.0)
    if path_type != "VP" and prediction == "velocity":
        train_eps = sample_eps = None  # velocity on Linear / GVP is stable everywhere: SiT ignores the flags
    return Transport(PATHS[path_type](), prediction, loss_weight,
                     defaults[0] if train_eps is None else train_eps, defaults[1] if sample_eps is None else sample_eps)


def prior_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of each sample of a batch."""
    n = z[0].numel()
    return -n / 2 * math.log(2 * math.pi) - (z**2).flatten(1).sum(dim=1) / 2
