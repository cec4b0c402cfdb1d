"""Process setup shared by every script: accelerate (torchrun, accelerate launch or a plain
python call; NCCL on GPUs, gloo on CPUs), TF32, and per-process seeding."""

from __future__ import annotations

import netrc
import os
import random
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch


def enable_tf32(flag: bool = True) -> None:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (official DiT turns it on;
    its README notes the published PyTorch numbers were measured with it off)."""
    torch.backends.cuda.matmul.allow_tf32 = flag
    torch.backends.cudnn.allow_tf32 = flag


FSDP_LAUNCH = "DIFFUSION_LAB_FSDP_LAUNCH"  # set when accelerate launch was given an FSDP config


def take_fsdp_launch() -> None:
    """``accelerate launch --config_file`` with ``distributed_type: FSDP`` (DMD2's SDXL configs) sets variables that
    make ``Accelerator`` wrap networks in its FSDP plugin. The processes are taken from the launch, the sharding is
    this repository's FSDP2 (``training/sharding.py``): the plugin's variables are removed and the launch noted
    (``launched_with_fsdp``)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("true", "1"):
        return
    for key in [k for k in os.environ if k.startswith("FSDP_")] + ["ACCELERATE_USE_FSDP"]:
        del os.environ[key]
    os.environ[FSDP_LAUNCH] = "1"


def launched_with_fsdp() -> bool:
    return os.environ.get(FSDP_LAUNCH) == "1"


def setup_accelerator(mixed_precision: str = "no", report_to: str = "none", allow_tf32: bool = True):
    from accelerate import Accelerator

    take_fsdp_launch()
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


def prepare_tracker(report_to: str) -> str | None:
    """Let ``--report-to wandb`` run without a login: wandb then logs offline (into the run folder) and
    the returned line says so and how to upload later. None when nothing had to change."""
    if report_to != "wandb" or os.environ.get("WANDB_API_KEY") or wandb_login_saved():
        return None
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return None
    os.environ["WANDB_MODE"] = "offline"
    return ("wandb: no login found (run `wandb login` or set WANDB_API_KEY), so it logs offline into the run "
            "folder's wandb/; upload it later with `wandb sync <run folder>/wandb/offline-run-*`")


def wandb_login_saved() -> bool:
    """Whether ``wandb login`` saved a key for the wandb host in the netrc file (``$NETRC`` or ``~/.netrc``)."""
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
