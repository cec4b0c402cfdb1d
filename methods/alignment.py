"""Encoder targets for REPA's projection loss and REG's class token (one home for train scripts)."""

from __future__ import annotations

import torch

from models.encoders import reg_target


@torch.no_grad()
def encoder_targets(encoders, raw: torch.Tensor, reg: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Features of clean images ``raw`` (N, 3, H, W) in [0, 255] from each frozen encoder.

    REPA aligns to the patch tokens; REG to ``[cls; patches]`` and also denoises the first
    encoder's class token (REG's ``train.py``: the DINOv2 ``x_norm_clstoken``). Returns the
    list of (N, T[+1], D_k) targets and REG's (N, D_0) class token (None for REPA).
    """
    zs, cls_token = [], None
    for k, encoder in enumerate(encoders):
        patches, cls = encoder(encoder.preprocess(raw))
        zs.append(reg_target(patches, cls) if reg else patches)
        if reg and k == 0:
            cls_token = cls
    return zs, cls_token


def check_token_counts(encoders, model_tokens: int, resolution: int, model_name: str) -> None:
    """The projectors read one token per patch: every encoder must give as many (REPA sec. 3)."""
    for encoder in encoders:
        n = encoder.num_tokens(resolution)
        if n != model_tokens:
            raise ValueError(f"{encoder.name} gives {n} patch tokens at {resolution} px but {model_name} has "
                             f"{model_tokens}; use a patch size that gives {n} tokens (e.g. SiT-*/2 at 256 px)")
