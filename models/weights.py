"""Reading weights for a model: any checkpoint file (ours, official DiT, REPA, REG), the weights to
sample with, and a strict load whose error names the mismatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from common.checkpoint import CheckpointError


def model_state_dict(ckpt, prefer: str = "ema") -> dict:
    """The weights to sample with: an official raw state dict, or ours (EMA by default)."""
    if isinstance(ckpt, dict) and prefer in ckpt and isinstance(ckpt[prefer], dict):
        return ckpt[prefer]
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        return ckpt["model"]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointError("checkpoint holds neither a state dict nor 'ema'/'model' weights")


FLAGS_HINT = "Check --model, --image-size, --num-classes and --vae against the checkpoint"


def load_weights(model: torch.nn.Module, state_dict: dict, source: str, assign: bool = False,
                 hint: str = FLAGS_HINT) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatch and ``hint``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint "
                         f"{tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(parts)}. {hint}")
    model.load_state_dict(state_dict, strict=True, assign=assign)


def sha256_of(path: str | Path, chunk: int = 1 << 24) -> str:
    """The checkpoint's identity: sha256 of its bytes (read once per run, on one process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
