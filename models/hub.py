"""Where downloaded weights live, whether downloading is allowed, and an atomic download.

One home for every loader of released weights (DiT checkpoints, encoders, Inception, the proxy
classifier's cache): files go to ``$DIFFUSION_LAB_CACHE`` (default ``~/.cache/diffusion-lab``);
``DIFFUSION_LAB_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbids downloads, so a missing file becomes
the caller's one-line error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_ENV = "DIFFUSION_LAB_CACHE"


def cache_dir() -> Path:
    """``$DIFFUSION_LAB_CACHE`` or ``~/.cache/diffusion-lab``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffusion-lab")


def offline() -> bool:
    """True when ``DIFFUSION_LAB_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1 / true."""
    return any(os.environ.get(name, "0") in ("1", "true", "True") for name in ("DIFFUSION_LAB_OFFLINE", "HF_HUB_OFFLINE"))


def download(url: str, target: Path, hash_prefix: str | None = None) -> bool:
    """Fetch ``url`` to ``target`` through a process-private ``.part`` file; False when offline or it fails."""
    if offline():
        return False
    part = target.with_name(target.name + f".{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(part), hash_prefix=hash_prefix, progress=True)
        os.replace(part, target)
        return True
    except Exception:
        part.unlink(missing_ok=True)
        return False
