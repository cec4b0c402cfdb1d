"""Learning-rate schedules: a pure function of the step, so resume needs no scheduler state."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_at(step: int, base_lr: float, schedule: str = "constant", warmup_steps: int = 0,
          total_steps: int | None = None, min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps`` steps
    (Goyal et al., 2017), then ``constant``, or a ``linear`` or ``cosine`` (Loshchilov & Hutter,
    2017) decay to ``min_lr`` at ``total_steps``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps or total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if schedule == "linear":
        return min_lr + (base_lr - min_lr) * (1 - progress)
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def constant_with_warmup(step: int, base_lr: float, warmup_steps: int, processes: int = 1) -> float:
    """diffusers' ``constant_with_warmup`` as DMD2 runs it: ``base_lr * s / warmup_steps`` up to ``warmup_steps``,
    then ``base_lr``, where ``s = step * processes`` because accelerate advances a prepared scheduler once per
    process each iteration; the warm-up thus lasts ``warmup_steps / processes`` iterations (DMD2's comment in
    ``train_edm.py`` says so), and step 0 already has ``base_lr`` without warm-up."""
    s = step * processes
    return base_lr if s >= warmup_steps else base_lr * s / warmup_steps
