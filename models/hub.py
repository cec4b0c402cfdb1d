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



def hub_parts(name: str) -> tuple[str, str | None, str | None] | None:
    """``(repo id, subfolder, revision)`` of a hub name, ``owner/name[/subfolder][@revision]``
    (``runwayml/stable-diffusion-v1-5/vae``); None for what is a local path (``./``, ``/``, ``~``) or no hub name."""
    name, _, revision = name.partition("@")
    parts = name.split("/")
    if name.startswith((".", "/", "~")) or len(parts) < 2 or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


def hub_name(repo: str, subfolder: str | None = None, revision: str | None = None) -> str:
    """The inverse of ``hub_parts``: what a checkpoint records for a part of a hub model."""
    return repo + (f"/{subfolder}" if subfolder else "") + (f"@{revision}" if revision else "")


def from_pretrained(cls, name: str, flag: str, subfolder: str | None = None, revision: str | None = None, **kwargs):
    """``cls.from_pretrained`` (diffusers or transformers) of a local folder or a hub name (``hub_parts``), as those
    libraries load them: a hub model from the Hugging Face cache first, then, unless offline, from the hub. Missing
    either way: one line that names the id and says how to fetch it or where to point ``flag`` instead."""
    folder = Path(name).expanduser()
    if folder.exists():
        return cls.from_pretrained(folder, **kwargs, **({"subfolder": subfolder} if subfolder else {}))
    parts = hub_parts(name)
    if parts is None:
        raise ValueError(f"{flag} {name}: no such folder (a local folder or a Hugging Face Hub id, owner/name)")
    repo, sub, rev = parts
    subfolder, revision = "/".join(p for p in (sub, subfolder) if p) or None, revision or rev
    kwargs.update({"subfolder": subfolder} if subfolder else {}, **({"revision": revision} if revision else {}))
    try:
        return cls.from_pretrained(repo, local_files_only=True, **kwargs)
    except Exception:
        if not offline():
            try:
                return cls.from_pretrained(repo, **kwargs)
            except Exception:
                pass
    what = f"{subfolder}/ of {repo}" if subfolder else repo
    local = Path("vae" if flag.endswith("vae") else "pretrained") / repo.split("/")[-1]
    raise ValueError(f"{flag} {name}: {what}{f' at revision {revision}' if revision else ''} is not in the Hugging "
                     f"Face cache and cannot be downloaded; on a machine with internet run `hf download {repo}"
                     f"{f' --revision {revision}' if revision else ''} --local-dir {local}`, copy the folder here and "
                     f"pass {flag} {local / subfolder if subfolder else local}") from None
