"""Exponential moving average of the weights (DiT: decay 0.9999 every step)."""

from __future__ import annotations

import torch


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float = 0.9999) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over parameters and floating buffers.

    ``decay=0`` copies the model (used once at initialisation).
    """
    ema_params = dict(ema.named_parameters())
    params = [(ema_params[name], p) for name, p in model.named_parameters()]
    if params:
        torch._foreach_lerp_([e for e, _ in params], [p.detach().to(e.dtype) for e, p in params], 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, b in model.named_buffers():
        e = ema_buffers[name]
        if e.dtype.is_floating_point:
            e.lerp_(b.to(e.dtype), 1.0 - decay)
        else:
            e.copy_(b)


def requires_grad(model: torch.nn.Module, flag: bool = True) -> None:
    for p in model.parameters():
        p.requires_grad = flag
