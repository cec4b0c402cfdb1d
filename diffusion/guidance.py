"""Classifier-free guidance (Ho & Salimans, 2022), one home for every sampler.

The guided prediction is ``uncond + cfg_scale * (cond - uncond)``. Callers put the
conditional and unconditional inputs in one batch (conditional half first, the null
class ``num_classes`` in the second half); this module only decides when to guide and
combines the two halves.

Official DiT (``forward_with_cfg``) guides only the first three channels of the
eps prediction and passes the fourth eps channel and the learned-variance channels
through unguided. The release keeps this for exact reproducibility of its numbers
(a scale of 1.5 on three channels is close to 1.375 on four). ``DIT_GUIDED_CHANNELS``
reproduces it; ``guided_channels=None`` guides every channel (REPA / REG samplers).

REPA and REG guide only inside a guidance interval of time (Kynkaanniemi et al., 2024,
"Applying guidance in a limited interval"): ``guidance_active``. Their time runs from
t=1 (noise) to t=0 (data), so ``guidance_high=0.7`` guides the last 70% of the path,
the part near the data.
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


def guide(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Guided half of a batch ``[cond; uncond]`` (dim 0): ``uncond + cfg_scale * (cond - uncond)``,
    on every channel. The result has half the batch."""
    cond, uncond = out.chunk(2, dim=0)
    return uncond + cfg_scale * (cond - uncond)


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
