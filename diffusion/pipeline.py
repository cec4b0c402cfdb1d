"""Class-conditional generation: noise -> DDPM or DDIM with classifier-free guidance -> latents.

This is what official DiT ``sample.py`` and ``sample_ddp.py`` do inline; here it lives
once for every script (``sample.py``, ``sample_ddp.py``, the grids and evaluations
during training).
"""

from __future__ import annotations

import torch


def sample_latents(model, diffusion, noise: torch.Tensor, labels: torch.Tensor, *, cfg_scale: float = 1.0,
                   num_classes: int = 1000, sampler: str = "ddpm", eta: float = 0.0, clip_denoised: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """Run the reverse process from ``noise`` for class ``labels``.

    Guidance follows ``sample_ddp.py``: with ``cfg_scale > 1`` the batch is doubled with
    the null class (index ``num_classes``) and ``model.forward_with_cfg`` combines the
    halves; otherwise the conditional model runs alone. ``clip_denoised=False`` as in
    the official scripts (latents are not bounded); pixel-space models clip x0 to [-1, 1]
    (ADM), without which the first steps amplify eps errors by ``1 / sqrt(alpha_bar_t)``.
    """
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}; use 'ddpm' or 'ddim'")
    use_cfg = cfg_scale > 1.0
    if use_cfg:
        noise = torch.cat([noise, noise], 0)
        labels = torch.cat([labels, torch.full_like(labels, num_classes)], 0)
        fn, kwargs = model.forward_with_cfg, dict(y=labels, cfg_scale=cfg_scale)
    else:
        fn, kwargs = model.forward, dict(y=labels)
    common = dict(clip_denoised=clip_denoised, model_kwargs=kwargs, progress=progress, device=noise.device)
    if sampler == "ddpm":
        out = diffusion.p_sample_loop(fn, noise.shape, noise, **common)
    else:
        out = diffusion.ddim_sample_loop(fn, noise.shape, noise, eta=eta, **common)
    if use_cfg:
        out, _ = out.chunk(2, dim=0)
    return out


DDPM_SAMPLERS = ("ddpm", "ddim")  # DiT: GaussianDiffusion loops on respaced integer steps
FLOW_SAMPLERS = ("ode", "sde")    # SiT / REPA / REG: Euler (Heun) ODE, Euler-Maruyama SDE


def diffusion_for(model, timestep_respacing, noise_schedule: str = "linear"):
    """The DDPM process a DiT or U-Net was trained with: a learned variance (DiT's default) when the
    model outputs one, else the fixed posterior variance beta_tilde_t (DDPM's sigma_small)."""
    from diffusion import create_diffusion

    learn_sigma = getattr(model, "learn_sigma", True)
    return create_diffusion(timestep_respacing, noise_schedule=noise_schedule, learn_sigma=learn_sigma,
                            sigma_small=not learn_sigma)


def has_null_class(model) -> bool:
    """Whether the model learned the null class that guidance needs (label dropout > 0 in training)."""
    table = model.y_embedder.embedding_table
    return table.num_embeddings > model.y_embedder.num_classes


def is_flow_model(model) -> bool:
    """SiT-family models (tuple outputs, flow time in [0, 1]) carry ``z_dims``; DiT does not."""
    return hasattr(model, "z_dims")


def generate(model, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str, num_steps: int,
             cfg_scale: float = 1.0, num_classes: int = 1000, noise_schedule: str = "linear",
             eta: float = 0.0, clip_denoised: bool = False, heun: bool = False, guidance_low: float = 0.0, guidance_high: float = 1.0,
             path_type: str = "linear", cls_cfg_scale: float = 0.0, progress: bool = False) -> torch.Tensor:
    """Latents for ``labels`` from ``noise`` with any model and its samplers, in the latents' dtype.

    DiT (``ddpm`` / ``ddim``): ``sample_latents`` on ``num_steps`` respaced steps of the schedule
    it was trained with, clipping x0 when ``clip_denoised`` (pixel space). SiT (``ode`` / ``sde``): REPA's ``euler_sampler`` / ``euler_maruyama_sampler``
    with guidance inside ``[guidance_low, guidance_high]``; for a REG model the random class tokens
    are drawn here, after ``noise`` (as REG's generate.py does), and guided by ``cls_cfg_scale``.
    """
    from diffusion.samplers import euler_maruyama_sampler, euler_sampler

    flow = is_flow_model(model)
    if cfg_scale > 1.0 and not has_null_class(model):
        raise ValueError(f"--cfg-scale {cfg_scale} needs the null class, which this model never learned (trained "
                         "with --cfg-prob 0); sample it with --cfg-scale 1")
    valid = FLOW_SAMPLERS if flow else DDPM_SAMPLERS
    if sampler not in valid:
        kind = "SiT-family" if flow else "DiT"
        raise ValueError(f"a {kind} model samples with {' or '.join(valid)}, not {sampler!r}")
    if not flow:
        steps = f"ddim{num_steps}" if sampler == "ddim" else str(num_steps)
        diffusion = diffusion_for(model, steps, noise_schedule)
        return sample_latents(model, diffusion, noise, labels, cfg_scale=cfg_scale, num_classes=num_classes,
                              sampler=sampler, eta=eta, clip_denoised=clip_denoised, progress=progress)
    cls_dim = getattr(model, "cls_token_dim", None)
    if sampler == "ode" and cls_dim is not None:
        raise ValueError("a REG model samples with the SDE (--mode sde): its class token has no ODE in REG")
    common = dict(num_steps=num_steps, heun=heun, cfg_scale=cfg_scale, guidance_low=guidance_low,
                  guidance_high=guidance_high, path_type=path_type, null_class=num_classes)
    if sampler == "ode":
        out = euler_sampler(model, noise, labels, **common)
    else:
        cls_latents = None if cls_dim is None else torch.randn(len(noise), cls_dim, device=noise.device)
        out = euler_maruyama_sampler(model, noise, labels, cls_latents=cls_latents,
                                     cls_cfg_scale=cls_cfg_scale if cls_dim else 0.0, **common)
    return out.to(noise.dtype)
