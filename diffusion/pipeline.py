"""Class-conditional generation: noise -> DDPM or DDIM with classifier-free guidance -> latents.

This is what official DiT ``sample.py`` and ``sample_ddp.py`` do inline; here it lives
once for every script (``sample.py``, ``sample_ddp.py``, the grids and evaluations
during training).
"""

from __future__ import annotations

import torch


def sample_latents(model, diffusion, noise: torch.Tensor, labels: torch.Tensor, *, cfg_scale: float = 1.0,
                   num_classes: int = 1000, sampler: str = "ddpm", eta: float = 0.0,
                   progress: bool = False) -> torch.Tensor:
    """Run the reverse process from ``noise`` for class ``labels``.

    Guidance follows ``sample_ddp.py``: with ``cfg_scale > 1`` the batch is doubled with
    the null class (index ``num_classes``) and ``model.forward_with_cfg`` combines the
    halves; otherwise the conditional model runs alone. ``clip_denoised=False`` as in
    the official scripts (latents are not bounded).
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
    common = dict(clip_denoised=False, model_kwargs=kwargs, progress=progress, device=noise.device)
    if sampler == "ddpm":
        out = diffusion.p_sample_loop(fn, noise.shape, noise, **common)
    else:
        out = diffusion.ddim_sample_loop(fn, noise.shape, noise, eta=eta, **common)
    if use_cfg:
        out, _ = out.chunk(2, dim=0)
    return out
