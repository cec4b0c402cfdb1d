"""Ancestral (DDPM) and DDIM samplers, mixed into ``GaussianDiffusion``.

Random draws follow the original implementation exactly: the start noise (when not given)
is ``torch.randn(*shape)``, then every step calls the model first and draws one
``torch.randn_like(x)`` after it, also at t = 0 and also for DDIM with eta = 0. With the same
``torch.manual_seed`` the samples therefore match the original's.
"""

from __future__ import annotations

from collections import deque

import torch

from .diffusion_utils import gather


def _batch_mask(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """1.0 where t != 0, shaped to broadcast over a batch: no noise is added at the last step."""
    return (t != 0).float().view(-1, *([1] * (ndim - 1)))


def _default_device(model, noise):
    if noise is not None:
        return noise.device
    if hasattr(model, "parameters"):
        return next(model.parameters()).device
    raise ValueError("pass device= (or noise=) when the model is not an nn.Module")


class SamplingMixin:
    """Samplers over ``self.p_mean_variance``; the host class supplies the process."""

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """One ancestral step x_t -> x_{t-1} = mu + sigma z, z ~ N(0, I), with no noise at
        t = 0 (Ho et al. 2020, Algorithm 2). ``cond_fn(x, t, **model_kwargs)`` returns
        grad log p(y | x_t) for classifier guidance of the mean. Returns ``sample`` and ``pred_xstart``."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        noise = torch.randn_like(x)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + _batch_mask(t, x.ndim) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, **kwargs):
        """Ancestral sampling from x_{T-1} ~ N(0, I) (or ``noise``) down to x_0; returns x_0.

        Keywords as ``p_sample_loop_progressive``: ``noise``, ``clip_denoised``, ``denoised_fn``,
        ``cond_fn``, ``model_kwargs``, ``device`` (default: that of ``noise``, else of the
        model's parameters) and ``progress`` (a tqdm bar).
        """
        return _last(self.p_sample_loop_progressive(model, shape, noise, **kwargs))["sample"]

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
    ):
        """Like ``p_sample_loop`` but yields each step's ``p_sample`` dict, from t = T-1 to 0."""
        yield from self._sample_loop(
            self.p_sample,
            model,
            shape,
            noise,
            device,
            progress,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )

    def ddim_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None, eta=0.0
    ):
        """One DDIM step (Song et al. 2021, eq 12), eps re-derived from the x_0 prediction:
        x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
        sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev) (eq 16).
        eta = 0 is the deterministic sampler, eta = 1 matches DDPM's variance. ``cond_fn``
        guides the score (condition_score)."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = gather(self.alphas_cumprod, t, x.shape)
        abar_prev = gather(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        noise = torch.randn_like(x)
        mean = out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        sample = mean + _batch_mask(t, x.ndim) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, **kwargs):
        """DDIM sampling over every step of this (usually respaced) process; returns x_0.
        Keywords as ``ddim_sample_loop_progressive`` (those of ``p_sample_loop`` and ``eta``)."""
        return _last(self.ddim_sample_loop_progressive(model, shape, noise, **kwargs))["sample"]

    def ddim_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        eta=0.0,
    ):
        """Like ``ddim_sample_loop`` but yields each step's ``ddim_sample`` dict."""
        yield from self._sample_loop(
            self.ddim_sample,
            model,
            shape,
            noise,
            device,
            progress,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
            eta=eta,
        )

    def _sample_loop(self, step, model, shape, noise, device, progress, **step_kwargs):
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if device is None:
            device = _default_device(model, noise)
        x = noise if noise is not None else torch.randn(*shape, device=device)
        steps = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps)
        for i in steps:
            t = torch.tensor([i] * shape[0], device=device)
            with torch.no_grad():
                out = step(model, x, t, **step_kwargs)
                yield out
                x = out["sample"]


def _last(iterable):
    """The final item of a progressive loop."""
    return deque(iterable, maxlen=1)[0]
