"""Class-conditional generation: noise -> any sampler, any model, classifier-free guidance -> latents.

What official DiT ``sample.py`` / ``sample_ddp.py`` and REPA / REG ``generate.py`` do inline lives here
once for every script (``sample.py``, ``sample_ddp.py``, ``generate.py``, the grids and evaluations
during training). Models reach the samplers through ``diffusion.denoiser``; guidance (scale, interval,
channels, REG's class-token scale) through ``diffusion.guidance``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .denoiser import ddpm_sigmas, denoiser_for, eps_model, velocity_model
from .guidance import guided_ddpm_model

DDPM_SAMPLERS = ("ddpm", "ddim")  # GaussianDiffusion loops on respaced integer steps
FLOW_SAMPLERS = ("ode", "sde")    # REPA / REG: Euler (Heun) ODE, Euler-Maruyama SDE
SAMPLERS = (*DDPM_SAMPLERS, *FLOW_SAMPLERS)


def diffusion_for(model, timestep_respacing, noise_schedule: str = "linear"):
    """The DDPM process to sample (or train) ``model`` with: a learned variance (DiT's default) when the
    model outputs one, else the fixed posterior variance beta_tilde_t (DDPM's sigma_small)."""
    from diffusion import create_diffusion

    learn_sigma = getattr(model, "prediction", "eps") == "eps" and getattr(model, "learn_sigma", True)
    return create_diffusion(timestep_respacing, noise_schedule=noise_schedule, learn_sigma=learn_sigma,
                            sigma_small=not learn_sigma)


def base_alphas_cumprod(noise_schedule: str = "linear") -> np.ndarray:
    """abar of the 1000-step process a DDPM model is trained on (float64)."""
    from diffusion import create_diffusion

    return create_diffusion("", noise_schedule=noise_schedule).alphas_cumprod


def has_null_class(model) -> bool:
    """Whether the model learned the null class that guidance needs (label dropout > 0 in training)."""
    table = model.y_embedder.embedding_table
    return table.num_embeddings > model.y_embedder.num_classes


def is_flow_model(model) -> bool:
    """Whether the model predicts a velocity on an interpolant path (SiT / REPA / REG)."""
    return getattr(model, "prediction", None) == "velocity"


def default_guided_channels(model) -> int | None:
    """The channels guidance acts on unless told otherwise: the model's ``guided_channels`` (a DiT: the
    first three, as official DiT), else every channel (None)."""
    return getattr(model, "guided_channels", None)


def _packed(model, shape):
    """``model(x, t, y, cls_token=c) -> (eps, eps_cls)`` as a model of one state ``[x.flatten(1), c]``, so
    that the ``GaussianDiffusion`` loops step the latents and REG's class token together (their
    updates act elementwise with per-sample coefficients)."""
    k = math.prod(shape)

    def packed(state, t, y, **kwargs):
        eps, eps_cls = model(state[:, :k].reshape(-1, *shape), t, y=y, cls_token=state[:, k:], **kwargs)
        return torch.cat([eps.flatten(1), eps_cls.to(eps.dtype)], 1)

    return packed


def _ddpm_sample(den, noise, labels, *, sampler, num_steps, cfg_scale, num_classes, noise_schedule, eta,
                 clip_denoised, guidance_low, guidance_high, guided_channels, cls_latents, cls_cfg_scale, progress):
    """``GaussianDiffusion``'s DDPM or DDIM loop on ``num_steps`` respaced steps. With guidance the batch
    is doubled with the null class, so a seeded run draws the noise official DiT does. REG's class
    token ``cls_latents`` is packed beside the latents (``_packed``); x0 clipping never touches it."""
    steps = f"ddim{num_steps}" if sampler == "ddim" else str(num_steps)
    diffusion = diffusion_for(den.model, steps, noise_schedule)
    base = base_alphas_cumprod(noise_schedule)
    fn, state, denoised_fn = eps_model(den, base), noise, None
    if cfg_scale > 1.0:
        fn = guided_ddpm_model(fn, ddpm_sigmas(base), cfg_scale, guidance_low, guidance_high, guided_channels,
                               cls_cfg_scale)
    if cls_latents is not None:
        k = noise[0].numel()
        fn, state = _packed(fn, noise.shape[1:]), torch.cat([noise.flatten(1), cls_latents.to(noise.dtype)], 1)
        if clip_denoised:
            def denoised_fn(x0):
                return torch.cat([x0[:, :k].clamp(-1, 1), x0[:, k:]], 1)
            clip_denoised = False
    if cfg_scale > 1.0:
        state = torch.cat([state, state], 0)
        labels = torch.cat([labels, torch.full_like(labels, num_classes)], 0)
    common = dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=dict(y=labels),
                  progress=progress, device=noise.device)
    if sampler == "ddpm":
        out = diffusion.p_sample_loop(fn, state.shape, state, **common)
    else:
        out = diffusion.ddim_sample_loop(fn, state.shape, state, eta=eta, **common)
    out = out[: len(noise)]
    return out if cls_latents is None else out[:, :k].reshape(noise.shape)


def generate(model, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str, num_steps: int,
             cfg_scale: float = 1.0, num_classes: int = 1000, noise_schedule: str = "linear",
             eta: float = 0.0, clip_denoised: bool = False, heun: bool = False, guidance_low: float = 0.0,
             guidance_high: float = 1.0, path_type: str = "linear", cls_cfg_scale: float = 0.0,
             guided_channels: int | None = None, progress: bool = False) -> torch.Tensor:
    """Latents for ``labels`` from ``noise`` with any model and any sampler, in the latents' dtype.

    ``ddpm`` / ``ddim``: ``num_steps`` respaced steps of the DDPM process ``noise_schedule`` (a DDPM
    model's own; a flow model is read through its eps at each step's sigma, with the fixed variance),
    clipping x0 when ``clip_denoised`` (pixel space). ``ode`` / ``sde``: REPA's ``euler_sampler`` /
    ``euler_maruyama_sampler`` on ``path_type`` (a flow model's own; a DDPM model is read through
    its velocity). Guidance: ``cfg_scale`` inside ``[guidance_low, guidance_high]`` in REPA's time
    (sigma / (1 + sigma) for the DDPM samplers) on the first ``guided_channels`` channels (default:
    ``default_guided_channels``). For a REG model the random class tokens are drawn here, after
    ``noise`` (as REG's generate.py does), and guided by ``cls_cfg_scale``. A model with its own
    latent normalisation returns de-normalised latents (``Denoiser.denormalize``).
    """
    from diffusion.samplers import euler_maruyama_sampler, euler_sampler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if heun and sampler != "ode":
        raise ValueError(f"Heun's method is a step of the ODE sampler (ode), not of {sampler}")
    if cfg_scale > 1.0 and not has_null_class(model):
        raise ValueError(f"--cfg-scale {cfg_scale} needs the null class, which this model never learned (trained "
                         "with --cfg-prob 0); sample it with --cfg-scale 1")
    if guided_channels is None:
        guided_channels = default_guided_channels(model)
    cls_dim = getattr(model, "cls_token_dim", None)
    den = denoiser_for(model, base_alphas_cumprod(noise_schedule), path_type)
    cls_latents = None if cls_dim is None else torch.randn(len(noise), cls_dim, device=noise.device)
    cls = dict(cls_latents=cls_latents, cls_cfg_scale=cls_cfg_scale if cls_dim else 0.0)
    guidance = dict(cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high,
                    guided_channels=guided_channels)
    if sampler in DDPM_SAMPLERS:
        out = _ddpm_sample(den, noise, labels, sampler=sampler, num_steps=num_steps, num_classes=num_classes,
                           noise_schedule=noise_schedule, eta=eta, clip_denoised=clip_denoised, progress=progress,
                           **guidance, **cls)
    else:
        fn = velocity_model(den, path_type)
        common = dict(num_steps=num_steps, path_type=path_type, null_class=num_classes, **guidance, **cls)
        if sampler == "ode":
            out = euler_sampler(fn, noise, labels, heun=heun, **common)
        else:
            out = euler_maruyama_sampler(fn, noise, labels, **common)
    return den.denormalize(out.to(noise.dtype))
