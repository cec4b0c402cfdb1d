"""Process setup shared by every script: accelerate (torchrun, accelerate launch or a plain
python call; NCCL on GPUs, gloo on CPUs), TF32, and per-process seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def enable_tf32(flag: bool = True) -> None:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (official DiT turns it on;
    its README notes the published PyTorch numbers were measured with it off)."""
    torch.backends.cuda.matmul.allow_tf32 = flag
    torch.backends.cudnn.allow_tf32 = flag


def setup_accelerator(mixed_precision: str = "no", report_to: str = "none", allow_tf32: bool = True):
    from accelerate import Accelerator

    enable_tf32(allow_tf32)
    log_with = None if report_to == "none" else report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
    if report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("--report-to wandb needs the wandb package: pip install wandb") from None
    kwargs = {}
    if report_to == "tensorboard":
        kwargs["project_dir"] = "."
    # Without CUDA, cpu=True is what makes accelerate join a torchrun process group (gloo).
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, cpu=not torch.cuda.is_available(),
                       **kwargs)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
