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

from .denoiser import ddpm_sigmas, denoiser_for, eps_model, noised, velocity_model
from .guidance import DIT_GUIDED_CHANNELS, combine_cfg, guided_ddpm_model
from .network import contract

DDPM_SAMPLERS = ("ddpm", "ddim")  # GaussianDiffusion loops on respaced integer steps
FLOW_SAMPLERS = ("ode", "sde")    # REPA / REG: Euler (Heun) ODE, Euler-Maruyama SDE
EDM_SAMPLER = "edm"               # EDM's Heun sampler (Algorithm 2) on Karras noise levels
FEW_STEP = "fewstep"              # a distilled generator (DMD2) on its own noise levels
SAMPLERS = (*DDPM_SAMPLERS, *FLOW_SAMPLERS, EDM_SAMPLER, FEW_STEP)


def default_sampler(prediction: str | None, *, class_token: bool = False, generator: bool = False,
                    flow: str = "sde", ddpm: str = "ddpm") -> str:
    """The sampler a family samples with unless told otherwise: a distilled generator its own steps, EDM's
    networks EDM's Heun sampler, REG the SDE (REG's own), other flows (SiT / REPA) ``flow``, DDPM models
    ``ddpm``; a script or a view picks ``flow`` and ``ddpm`` (a grid: the deterministic ones)."""
    if generator:
        return FEW_STEP
    if prediction == "x0":
        return EDM_SAMPLER
    if prediction == "velocity":
        return "sde" if class_token else flow
    return ddpm


def diffusion_for(model, timestep_respacing, noise_schedule: str = "linear"):
    """The DDPM process to sample (or train) ``model`` with: a learned variance (DiT's default) when the
    model outputs one, else the fixed posterior variance beta_tilde_t (DDPM's sigma_small)."""
    from diffusion import create_diffusion

    learn_sigma = contract(model).learned_variance
    return create_diffusion(timestep_respacing, noise_schedule=noise_schedule, learn_sigma=learn_sigma,
                            sigma_small=not learn_sigma)


def base_alphas_cumprod(noise_schedule: str = "linear") -> np.ndarray:
    """abar of the 1000-step process a DDPM model is trained on (float64)."""
    from diffusion import create_diffusion

    return create_diffusion("", noise_schedule=noise_schedule).alphas_cumprod


def alphas_cumprod_for(model, noise_schedule: str = "linear") -> np.ndarray:
    """The abar table ``model`` reads noise levels on: its own (``contract``), else ``noise_schedule``'s."""
    own = contract(model).alphas_cumprod
    return np.asarray(own, dtype=np.float64) if own is not None else base_alphas_cumprod(noise_schedule)


def few_step_sample(den, noise: torch.Tensor, labels: torch.Tensor, sigmas, unit_noise: bool = False) -> torch.Tensor:
    """DMD2's few-step generation (sec. 4.4): from pure noise at ``sigmas[0]`` (``unit_noise``: the unit noise
    itself, as DMD2's SD generators and diffusers' pipelines start), the model's x0 at each level, noised with fresh
    noise to the next level (``(x0 + sigma eps) / sqrt(1 + sigma^2)``); the last x0."""
    n = len(noise)
    level = torch.full((n,), float(sigmas[0]), dtype=torch.float64, device=noise.device)
    x = noise if unit_noise else noised(torch.zeros_like(noise), level, noise)
    for i, sigma in enumerate(sigmas):
        x0 = den(x, torch.full((n,), float(sigma), dtype=torch.float64, device=noise.device), labels).x0
        if i + 1 < len(sigmas):
            level = torch.full((n,), float(sigmas[i + 1]), dtype=torch.float64, device=noise.device)
            x = noised(x0, level, torch.randn_like(x0))
    return x0


def edm_sample(den, noise: torch.Tensor, labels: torch.Tensor, *, num_steps: int, cfg_scale: float,
               num_classes: int, guidance_low: float, guidance_high: float, guided_channels: int | None,
               S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0):
    """EDM's sampler (``diffusion.edm.edm_sampler``) on any model: D(x; sigma) is the model's x0 at
    ``x_vp = x / sqrt(1 + sigma^2)``, clamped to the model's range; guidance as everywhere else, in
    REPA's time ``sigma / (1 + sigma)``. Returns the float64 result in ``noise``'s dtype."""
    from .edm import edm_sampler
    from .guidance import guidance_active, guide

    def net(x, sigma, y):
        s = torch.full((len(x),), float(sigma), dtype=torch.float64, device=x.device)
        x_vp = (x / torch.sqrt(1 + s**2).view(-1, *[1] * (x.ndim - 1))).to(noise.dtype)
        if not guidance_active(float(sigma) / (1 + float(sigma)), cfg_scale, guidance_low, guidance_high):
            return den(x_vp, s, y, x0_dtype=torch.float64).x0
        both = den(torch.cat([x_vp, x_vp]), torch.cat([s, s]), torch.cat([y, torch.full_like(y, num_classes)]),
                   x0_dtype=torch.float64).x0
        return guide(both, cfg_scale, guided_channels)

    net.sigma_min, net.sigma_max = den.sigma_min, den.sigma_max
    out = edm_sampler(net, noise, labels, num_steps=num_steps, S_churn=S_churn, S_min=S_min, S_max=S_max,
                      S_noise=S_noise)
    return out.to(noise.dtype)


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


def _generator_sample(model, net, noise, labels, sampler: str, cfg_scale: float, noise_schedule: str,
                      path_type: str) -> torch.Tensor:
    """``generate`` for a distilled generator, which samples in its own steps and nothing else."""
    if sampler != FEW_STEP or not net.generator_sigmas:
        raise ValueError(f"--sampler {FEW_STEP} is how a distilled generator (train_dmd2.py) samples, and such a "
                         f"generator samples with nothing else; this model {'is' if net.generator_sigmas else 'is not'} "
                         "one: " + (f"use --sampler {FEW_STEP}" if net.generator_sigmas else "choose another sampler"))
    if cfg_scale > 1.0:
        raise ValueError("a distilled generator has the teacher's guidance built in: sample it with --cfg-scale 1")
    den = denoiser_for(model, alphas_cumprod_for(model, noise_schedule), path_type)
    return den.denormalize(few_step_sample(den, noise, labels, net.generator_sigmas, net.unit_noise).to(noise.dtype))


def generate(model, noise: torch.Tensor, labels: torch.Tensor, *, sampler: str, num_steps: int,
             cfg_scale: float = 1.0, num_classes: int = 1000, noise_schedule: str = "linear",
             eta: float = 0.0, clip_denoised: bool = False, heun: bool = False, guidance_low: float = 0.0,
             guidance_high: float = 1.0, path_type: str = "linear", cls_cfg_scale: float = 0.0,
             guided_channels: int | None = None, progress: bool = False, S_churn: float = 0.0, S_min: float = 0.0,
             S_max: float = float("inf"), S_noise: float = 1.0) -> torch.Tensor:
    """Latents for ``labels`` from ``noise`` with any model and any sampler, in the latents' dtype.

    ``ddpm`` / ``ddim``: ``num_steps`` respaced steps of the DDPM process ``noise_schedule`` (a DDPM
    model's own; a flow model is read through its eps at each step's sigma, with the fixed variance),
    clipping x0 when ``clip_denoised`` (pixel space). ``ode`` / ``sde``: REPA's ``euler_sampler`` /
    ``euler_maruyama_sampler`` on ``path_type`` (a flow model's own; a DDPM model is read through
    its velocity). Guidance: ``cfg_scale`` inside ``[guidance_low, guidance_high]`` in REPA's time
    (sigma / (1 + sigma) for the DDPM samplers) on the first ``guided_channels`` channels (default: the
    model's ``guided_channels``). For a REG model the random class tokens are drawn here, after
    ``noise`` (as REG's generate.py does), and guided by ``cls_cfg_scale``. A model with its own
    latent normalisation returns de-normalised latents (``Denoiser.denormalize``).
    """
    from diffusion.repa_samplers import euler_maruyama_sampler, euler_sampler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if heun and sampler != "ode":
        raise ValueError(f"Heun's method is a step of the ODE sampler (ode), not of {sampler}")
    net = contract(model)
    if sampler == FEW_STEP or net.generator_sigmas:
        return _generator_sample(model, net, noise, labels, sampler, cfg_scale, noise_schedule, path_type)
    if net.sit_only:
        return _sit_only_sample(model, net, noise, labels, sampler, num_steps, cfg_scale, num_classes, heun,
                                guidance_low, guidance_high)
    if cfg_scale > 1.0 and net.null_class is None:
        raise ValueError(f"--cfg-scale {cfg_scale} needs the null class, which this model never learned (trained "
                         "with --cfg-prob 0); sample it with --cfg-scale 1")
    if guided_channels is None:
        guided_channels = net.guided_channels
    cls_dim = net.cls_token_dim
    den = denoiser_for(model, alphas_cumprod_for(model, noise_schedule), path_type)
    cls_latents = None if cls_dim is None else torch.randn(len(noise), cls_dim, device=noise.device)
    cls = dict(cls_latents=cls_latents, cls_cfg_scale=cls_cfg_scale if cls_dim else 0.0)
    guidance = dict(cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high,
                    guided_channels=guided_channels)
    if sampler == EDM_SAMPLER:
        if cls_dim is not None:
            raise ValueError("the EDM sampler does not step REG's class token: sample REG with ddpm, ddim, ode or sde")
        out = edm_sample(den, noise, labels, num_steps=num_steps, num_classes=num_classes, S_churn=S_churn,
                         S_min=S_min, S_max=S_max, S_noise=S_noise, **guidance)
    elif sampler in DDPM_SAMPLERS:
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


def _sit_only_sample(model, net, noise, labels, sampler, num_steps, cfg_scale, num_classes, heun, guidance_low,
                     guidance_high):
    """A SiT that only SiT's samplers read (``Contract.sit_only``): ``ode`` is SiT's ODE with ``num_steps`` Euler
    (Heun) steps, ``sde`` SiT's default SDE (Euler-Maruyama, ``sigma`` form, ``Mean`` last step) over
    ``num_steps`` states; guided every step, as SiT's scripts."""
    from .sit_transport import create_transport

    what = f"a SiT trained with SiT's {net.transport.get('path_type')} path and {net.prediction} target"
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"{what} samples with SiT's ODE or SDE: --sampler ode or sde, or SiT's sample.py ODE|SDE")
    if guidance_low > 0.0 or guidance_high < 1.0:
        raise ValueError(f"{what} is guided at every step, as SiT's samplers: leave out --guidance-low/high")
    options = {"sampling_method": "heun2" if heun else "euler"} if sampler == "ode" else {"diffusion_form": "sigma"}
    return generate_sit(model, noise, labels, mode=sampler.upper(), transport=create_transport(**net.transport),
                        num_steps=num_steps + 1 if sampler == "ode" else num_steps, cfg_scale=cfg_scale,
                        num_classes=num_classes, **options)


SIT_MODES = ("ODE", "SDE")
SIT_PATHS = {"Linear": "linear", "GVP": "cosine"}  # SiT's paths that REPA's interpolants also have


def sit_network(model, *, path_type: str = "Linear", noise_schedule: str = "linear", cfg_scale: float = 1.0,
                doubled: bool = False):
    """Any model as SiT's samplers call it: ``(x, t, y) -> u``, the velocity in SiT's time (t=0 noise),
    ``u(x, t) = -v(x, 1 - t)`` of the model's velocity in REPA's time (``diffusion.denoiser.velocity_model``).
    ``doubled``: the batch is ``[x; x']`` with labels ``[y; null]`` and guidance is SiT's ``forward_with_cfg``
    (the first half's input twice, the first three channels guided, the rest each half's own)."""
    net = contract(model)
    if net.generator_sigmas:
        raise ValueError("a distilled generator samples with its own steps: leave out the ODE / SDE mode")
    if net.cls_token_dim:
        raise ValueError("SiT's samplers do not step REG's class token: sample REG with generate.py --mode sde")
    if net.transport:  # trained with SiT's transport: its own output (velocity, score or noise) in SiT's time
        def velocity(x, t, y):
            return model(x, t, y)
    elif path_type not in SIT_PATHS:
        raise ValueError(f"--path-type {path_type}: a velocity on SiT's VP path needs a model trained on it; "
                         f"sample this one with {' or '.join(SIT_PATHS)}")
    else:
        velocity = velocity_model(denoiser_for(model, base_alphas_cumprod(noise_schedule), SIT_PATHS[path_type]),
                                  SIT_PATHS[path_type])

    def u(x, t, y):
        if not doubled:
            return -velocity(x, 1 - t, y=y)[0]
        half = x[: len(x) // 2]
        out = -velocity(torch.cat([half, half]), 1 - t, y=y)[0]
        return combine_cfg(out, cfg_scale, DIT_GUIDED_CHANNELS)

    return u


def generate_sit(model, noise: torch.Tensor, labels: torch.Tensor, *, mode: str, transport, num_steps: int,
                 cfg_scale: float = 1.0, num_classes: int = 1000, noise_schedule: str = "linear", double: bool = False,
                 progress: bool = False, **options) -> torch.Tensor:
    """Latents from ``noise`` with SiT's ``mode`` (``ODE``: ``sample_ode``'s ``sampling_method``, ``atol``,
    ``rtol``, ``reverse``; ``SDE``: ``sample_sde``'s options) on ``transport``, any model. Guidance doubles the
    batch as SiT's scripts do (so the SDE draws the same noise as theirs); ``double`` doubles it without
    guidance, as SiT's ``sample.py`` always does."""
    from .sit_samplers import sample_ode, sample_sde

    doubled = double or cfg_scale > 1.0
    if cfg_scale > 1.0 and contract(model).null_class is None:
        raise ValueError(f"--cfg-scale {cfg_scale} needs the null class, which this model never learned; use 1")
    u = sit_network(model, path_type=transport.path.name, noise_schedule=noise_schedule, cfg_scale=cfg_scale,
                    doubled=doubled)
    x, y = noise, labels
    if doubled:
        x, y = torch.cat([noise, noise]), torch.cat([labels, torch.full_like(labels, num_classes)])
    if mode == "ODE":
        out = sample_ode(transport, u, x, num_steps=num_steps, y=y, **options)[-1]
    else:
        out = sample_sde(transport, u, x, num_steps=num_steps, progress=progress, y=y, **options)[-1]
    out = out[: len(noise)].to(noise.dtype)
    if contract(model).latent_norm is None:
        return out
    return denoiser_for(model, base_alphas_cumprod(noise_schedule), "linear").denormalize(out)  # REPA-E's


def sit_likelihood(model, x: torch.Tensor, labels: torch.Tensor, *, transport, num_steps: int,
                   noise_schedule: str = "linear", **options) -> torch.Tensor:
    """log p(x | y) in nats per sample under the model's probability-flow ODE (SiT's likelihood; unguided)."""
    from .sit_samplers import ode_likelihood

    u = sit_network(model, path_type=transport.path.name, noise_schedule=noise_schedule)
    return ode_likelihood(transport, u, x, num_steps=num_steps, y=labels, **options)[0]
