"""Classifier-free guidance (Ho & Salimans, 2022), one home for every sampler.

The guided prediction is ``uncond + cfg_scale * (cond - uncond)``. Callers put the
conditional and unconditional inputs in one batch (conditional half first); this
module only combines the two halves.

Official DiT (``forward_with_cfg``) guides only the first three channels of the
eps prediction and passes the fourth eps channel and the learned-variance channels
through unguided. The release keeps this for exact reproducibility of its numbers
(a scale of 1.5 on three channels is close to 1.375 on four). ``DIT_GUIDED_CHANNELS``
reproduces it; ``guided_channels=None`` guides every channel (REPA / REG samplers).
"""

from __future__ import annotations

import torch

DIT_GUIDED_CHANNELS = 3


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
    cond, uncond = torch.split(guided, len(guided) // 2, dim=0)
    half = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([half, half], dim=0), rest], dim=1)
