"""DDPM maths with the IDDPM / ADM conventions that DiT trains and samples with.

Notation (Ho et al. 2020): beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s.
Timesteps are integer indices 0..T-1 and index T-1 is the noisiest.

Numerics, kept from the original so that results match it: the coefficient tables are
float64 numpy arrays, and every lookup casts the picked values to float32 before they
meet a tensor. Outputs are therefore float32 for float32 / float16 / bfloat16 inputs.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch

from .ddpm_sampling import SamplingMixin
from .diffusion_utils import discretized_gaussian_log_likelihood, normal_kl
from .diffusion_utils import gather as _gather


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension."""
    return x.mean(dim=list(range(1, x.ndim)))


class ModelMeanType(enum.Enum):
    """What the network's (first C) output channels predict."""

    PREVIOUS_X = enum.auto()  # the posterior mean mu(x_t, x_0), i.e. x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise eps of q_sample


class ModelVarType(enum.Enum):
    """Where the reverse-process variance Sigma_t comes from."""

    LEARNED = enum.auto()  # the network outputs log Sigma_t directly
    FIXED_SMALL = enum.auto()  # beta_tilde_t, the posterior variance
    FIXED_LARGE = enum.auto()  # beta_t (beta_tilde_1 at t=0)
    LEARNED_RANGE = enum.auto()  # interpolation between the two in log space (IDDPM eq 15)


class LossType(enum.Enum):
    MSE = enum.auto()  # simple loss, plus the VB term when the variance is learned (IDDPM L_hybrid)
    RESCALED_MSE = enum.auto()  # same, VB term scaled by T / 1000
    KL = enum.auto()  # the variational bound term L_t alone
    RESCALED_KL = enum.auto()  # L_t * T, an estimate of the full bound

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """beta_0..beta_{T-1} as float64.

    "linear": Ho et al. 2020 (1e-4 to 0.02 over 1000 steps), both ends scaled by 1000 / T so
    the process stays similar for other T. "squaredcos_cap_v2": IDDPM eq 17,
    alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2), each beta capped at 0.999.
    """
    T = num_diffusion_timesteps
    if schedule_name == "linear":
        scale = 1000 / T
        return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    if schedule_name == "squaredcos_cap_v2":
        return betas_for_alpha_bar(T, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown noise schedule {schedule_name!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Discretize a continuous alpha_bar(s), s in [0, 1], into T betas (IDDPM eq 17):
    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)."""
    T = num_diffusion_timesteps
    return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)])


class GaussianDiffusion(SamplingMixin):
    """Forward process q and reverse process p_theta of a T-step DDPM.

    betas: 1-D array beta_0..beta_{T-1}, kept in float64. The samplers
    (``p_sample_loop``, ``ddim_sample_loop``, ...) come from ``SamplingMixin``.
    """

    def __init__(
        self, *, betas, model_mean_type: ModelMeanType, model_var_type: ModelVarType, loss_type: LossType
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D array of at least 2 steps, got shape {betas.shape}")
        if not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("every beta must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)

        alphas = 1.0 - betas
        abar = self.alphas_cumprod = np.cumprod(alphas)
        abar_prev = self.alphas_cumprod_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod_next = np.append(abar[1:], 0.0)

        # q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I), Ho et al. eq 4
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - abar)
        # x_0 = sqrt(1 / abar) x_t - sqrt(1 / abar - 1) eps, eq 4 solved for x_0
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1)

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I), Ho et al. eqs 6-7
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta_tilde_0 = 0 has no log; use beta_tilde_1 there (IDDPM sec 3.1)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)

    # ---- forward process -------------------------------------------------------------

    def q_mean_variance(self, x_start, t):
        """Mean, variance and log variance of q(x_t | x_0) (Ho et al. eq 4)."""
        mean = _gather(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _gather(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _gather(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. eq 4); eps ~ N(0, I) if not given."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            _gather(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs 6-7)."""
        mean = (
            _gather(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _gather(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = _gather(self.posterior_variance, t, x_t.shape)
        log_variance = _gather(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ---- reverse process -------------------------------------------------------------

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _gather(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart) / _gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        )

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        # the posterior mean (eq 7) solved for x_0
        return (xprev - _gather(self.posterior_mean_coef2, t, x_t.shape) * x_t) / _gather(
            self.posterior_mean_coef1, t, x_t.shape
        )

    def _fixed_variance(self):
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return self.posterior_variance, self.posterior_log_variance_clipped
        # FIXED_LARGE: beta_t, with beta_tilde_1 at t=0 for a better decoder likelihood
        variance = np.append(self.posterior_variance[1], self.betas[1:])
        return variance, np.log(variance)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the model and return p_theta(x_{t-1} | x_t) (Ho et al. eq 1) as a dict of
        ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` and ``extra``.

        ``model(x, t, **model_kwargs)`` returns C channels, or 2C when the variance is learned
        (the second half holds v for LEARNED_RANGE, log Sigma for LEARNED); a returned tuple
        ``(output, extra)`` passes ``extra`` through. ``denoised_fn`` then ``clip_denoised``
        (clamp to [-1, 1]) act on the x_0 prediction before the mean is formed from it.
        """
        B, C = x.shape[:2]
        output = model(x, t, **(model_kwargs or {}))
        extra = None
        if isinstance(output, tuple):
            output, extra = output

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if output.shape != (B, 2 * C, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must return {2 * C} channels, got {tuple(output.shape)}"
                )
            output, var_values = torch.split(output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                log_variance = var_values
            else:
                # IDDPM eq 15: v in [-1, 1] (not clamped) maps beta_tilde_t .. beta_t in log space
                min_log = _gather(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _gather(np.log(self.betas), t, x.shape)
                frac = (var_values + 1) / 2
                log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            variance, log_variance = (_gather(a, t, x.shape) for a in self._fixed_variance())

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, output))
            mean = output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, output))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "extra": extra,
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the mean: mu + Sigma grad log p(y | x_t)
        (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021, Algorithm 1)."""
        gradient = cond_fn(x, t, **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the score: eps - sqrt(1 - abar) grad log p(y | x_t)
        (Song et al. 2021; Dhariwal & Nichol 2021, Algorithm 2). Returns an updated copy."""
        abar = _gather(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - abar).sqrt() * cond_fn(x, t, **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ---- variational bound and training loss -----------------------------------------

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the variational bound, in bits per dimension (Ho et al. eq 5):
        KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t > 0 and the decoder
        NLL -log p_theta(x_0 | x_1) (eq 13) for t = 0. Returns ``output`` (N,) and ``pred_xstart``."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = mean_flat(nll) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-sample losses at timesteps ``t`` as a dict of (N,) tensors.

        MSE / RESCALED_MSE: ``mse`` = mean_flat((target - output)^2) with the target set by the
        mean type (Ho et al. eq 14 for eps); with a learned variance also ``vb``, the bound term
        computed with the predicted mean detached so it trains only the variance, and
        ``loss = mse + vb``. This is IDDPM's L_hybrid (sec 3.1): lambda = 1/1000 times the bound
        estimated as T * L_t, exact at T = 1000; RESCALED_MSE scales vb by T / 1000 to keep
        that for other T. KL / RESCALED_KL: ``loss`` = L_t (times T when rescaled).
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)

        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        output = model(x_t, t, **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            C = x_t.shape[1]
            if output.shape != (x_t.shape[0], 2 * C, *x_t.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must return {2 * C} channels, got {tuple(output.shape)}"
                )
            output, var_values = torch.split(output, C, dim=1)
            # the VB term sees the mean prediction as a constant: it trains only the variance
            frozen = torch.cat([output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *_, r=frozen: r, x_start, x_t, t, clip_denoised=False)[
                "output"
            ]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)

        if self.model_mean_type == ModelMeanType.EPSILON:
            target = noise
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        terms["mse"] = mean_flat((target - output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_{T-1} | x_0) || N(0, I)) in bits per dimension, the L_T term (constant in theta)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """The full variational bound in bits per dimension, one fresh noise draw per step
        from t = T-1 down to 0. Returns ``total_bpd`` and ``prior_bpd`` (N,) and per-step
        (N, T) tensors ``vb``, ``xstart_mse`` and ``mse`` (eps error) whose column j holds
        t = T-1-j (loop order, as in the original)."""
        vb, xstart_mse, mse = [], [], []
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x_start.shape[0],), i, device=x_start.device, dtype=torch.long)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(
                    model, x_start, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
                )
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb, xstart_mse, mse = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }
