"""Classifier-free guidance (Ho & Salimans, 2022), one home for every sampler.

The guided prediction is ``uncond + cfg_scale * (cond - uncond)``. Callers put the
conditional and unconditional inputs in one batch (conditional half first, the null
class ``num_classes`` in the second half); this module decides when to guide and
combines the two halves. The combination is linear, so guiding eps, x0, v or the SDE
drift of the same input is the same thing; each sampler guides what it steps with.

- Channels: official DiT (``forward_with_cfg``) guides only the first three channels of
  the eps prediction and passes the fourth eps channel and the learned-variance channels
  through unguided; the release keeps this for exact reproducibility of its numbers (a
  scale of 1.5 on three channels is close to 1.375 on four). A DiT declares
  ``guided_channels = DIT_GUIDED_CHANNELS`` and every sampler honours it; other models
  guide every channel. Learned-variance channels are never guided.
- Interval: REPA and REG guide only inside an interval of time (Kynkaanniemi et al.,
  2024, "Applying guidance in a limited interval"): ``guidance_active``. The time is
  REPA's: t=1 noise, t=0 data, ``guidance_high=0.7`` guides the part near the data. The
  DDPM samplers use the same time, ``t = sigma / (1 + sigma)`` of their step (the linear
  path's time at that noise level).
- REG's class token has its own scale (``diffusion.repa_samplers``).
"""

from __future__ import annotations

import torch

DIT_GUIDED_CHANNELS = 3


def guidance_active(
    t_cur: float | torch.Tensor, cfg_scale: float, guidance_low: float = 0.0, guidance_high: float = 1.0
) -> bool:
    """True iff classifier-free guidance applies at time ``t_cur``: ``cfg_scale > 1`` and
    ``guidance_low <= t_cur <= guidance_high`` (closed interval, as REPA/REG ``samplers.py``).

    Where it is False the samplers run the conditional model alone (one pass, not two).
    """
    return cfg_scale > 1.0 and guidance_low <= float(t_cur) <= guidance_high


def guide(out: torch.Tensor, cfg_scale: float, guided_channels: int | None = None) -> torch.Tensor:
    """Guided half of a batch ``[cond; uncond]`` (dim 0): ``uncond + cfg_scale * (cond - uncond)`` on
    channels ``[:guided_channels]`` (dim 1; None: every channel), the conditional output on the rest.
    The result has half the batch."""
    cond, uncond = out.chunk(2, dim=0)
    if guided_channels is None or guided_channels >= out.shape[1]:
        return uncond + cfg_scale * (cond - uncond)
    k = guided_channels
    return torch.cat([uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k]), cond[:, k:]], dim=1)


def combine_cfg(out: torch.Tensor, cfg_scale: float, guided_channels: int | None = None) -> torch.Tensor:
    """Guide a batch ``[cond; uncond]`` of model outputs.

    Returns a tensor of the same shape whose two halves are identical on the guided
    channels, ``uncond + cfg_scale * (cond - uncond)``, and equal to the input elsewhere.
    ``guided_channels=k`` guides channels ``[:k]`` only (dim 1).
    """
    if guided_channels is None:
        guided, rest = out, out[:, :0]
    else:
        guided, rest = out[:, :guided_channels], out[:, guided_channels:]
    half = guide(guided, cfg_scale)
    return torch.cat([torch.cat([half, half], dim=0), rest], dim=1)


def guided_ddpm_model(model, sigmas: torch.Tensor, cfg_scale: float, guidance_low: float = 0.0,
                      guidance_high: float = 1.0, guided_channels: int | None = None, cls_cfg_scale: float = 0.0):
    """``model`` for a ``GaussianDiffusion`` loop over a doubled batch ``[x; x']`` with labels
    ``[y; null]``, guided as official DiT's ``forward_with_cfg``: the model sees ``[x; x]`` and the
    first ``guided_channels`` eps channels (default: all of x's, never the learned-variance ones) are
    guided. Outside the interval, in REPA's time ``t = sigma_t / (1 + sigma_t)`` of the base step's
    ``sigmas[t]``, the conditional model runs alone on ``x`` and its output fills both halves.
    The second half of the state only keeps the batch (and so the noise draws) the official
    scripts have; it is discarded at the end.

    With ``cls_token=`` (REG) the model returns ``(eps, eps_cls)``; the token's eps is guided by
    ``cls_cfg_scale`` under REG's rule (``cls_cfg_scale <= 0``: its conditional eps).
    """

    always = cfg_scale > 1.0 and guidance_low <= 0.0 and guidance_high >= 1.0  # no host sync per step

    def repa_time(t):
        sigma = float(sigmas[int(t[0])])
        return sigma / (1 + sigma)

    def guided(x, t, y, cls_token=None, **kwargs):
        n = len(x) // 2
        if cls_token is not None:
            kwargs["cls_token"] = torch.cat([cls_token[:n], cls_token[:n]])
        if always or guidance_active(repa_time(t), cfg_scale, guidance_low, guidance_high):
            channels = x.shape[1] if guided_channels is None else min(guided_channels, x.shape[1])
            out = model(torch.cat([x[:n], x[:n]]), t, y=y, **kwargs)
            if cls_token is None:
                return combine_cfg(out, cfg_scale, channels)
            token = guide(out[1], cls_cfg_scale) if cls_cfg_scale > 0 else out[1][:n]
            return combine_cfg(out[0], cfg_scale, channels), torch.cat([token, token])
        if cls_token is not None:
            kwargs["cls_token"] = kwargs["cls_token"][:n]
        out = model(x[:n], t[:n], y=y[:n], **kwargs)
        if cls_token is None:
            return torch.cat([out, out])
        return torch.cat([out[0], out[0]]), torch.cat([out[1], out[1]])

    return guided
