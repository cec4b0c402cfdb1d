"""Cached VAE latents written once by ``preprocessing/encode_latents.py``.

Layout of a cache folder:
  ``latents.json``  manifest (written last: a cache without it is incomplete)
  ``moments.npy``   float16 (N, 2, 2C, h, w): posterior mean and std of each image (index 0)
                    and of its horizontal flip (index 1), unscaled
  ``labels.npy``    int64 (N,)
Training draws ``z = (mean + std * eps) * scale`` every step, exactly what encoding the
image online would give, so the cache loses no augmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

MANIFEST = "latents.json"
FORMAT = "diffusion-lab-latents-v1"


def is_latent_cache(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class LatentDataset(Dataset):
    """Returns ``(moments float32 (2, 2C, h, w), label)``; see the module docstring."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not is_latent_cache(root):
            if (root / "moments.npy").exists():
                raise ValueError(f"{root} is an incomplete latent cache (no {MANIFEST}: encoding was interrupted "
                                 "or is still running); re-run preprocessing/encode_latents.py with this --output")
            raise ValueError(f"{root} is not a latent cache (no {MANIFEST}); "
                             "create one with preprocessing/encode_latents.py")
        self.manifest = json.loads((root / MANIFEST).read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{root}/{MANIFEST}: unknown format {self.manifest.get('format')!r}")
        self.moments = np.load(root / "moments.npy", mmap_mode="r")
        self.labels = np.load(root / "labels.npy")
        if len(self.moments) != self.manifest["count"] or len(self.labels) != self.manifest["count"]:
            raise ValueError(f"{root}: moments/labels do not hold {self.manifest['count']} entries; "
                             "re-run preprocessing/encode_latents.py")
        self.scale = float(self.manifest["scale"])
        self.image_size = int(self.manifest["image_size"])
        self.vae = self.manifest["vae"]
        self.latent_shape = tuple(self.manifest["latent_shape"])
        self.num_classes = int(self.manifest["num_classes"])
        c, h, w = self.latent_shape
        if self.moments.shape[1:] != (2, 2 * c, h, w):
            raise ValueError(f"{root}/moments.npy has shape {self.moments.shape}, not (N, 2, {2 * c}, {h}, {w}) "
                             f"as {MANIFEST} says; re-run preprocessing/encode_latents.py")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.asarray(self.moments[i], dtype=np.float32)), int(self.labels[i])

    def model_input(self, batch, codec, flip: bool = True):
        """``(None, x, y)``: each row's flipped moments with probability 1/2 (unflipped without ``flip``)."""
        moments, y = batch
        flipped = torch.rand(moments.shape[0]) < 0.5 if flip else torch.zeros(moments.shape[0], dtype=torch.bool)
        return None, sample_latents(moments, flipped, self.scale), y


def sample_latents(moments: torch.Tensor, flip: torch.Tensor, scale: float) -> torch.Tensor:
    """Pick each row's (flipped or not) moments and draw ``(mean + std * eps) * scale``.

    ``flip`` may live on another device than ``moments`` (the training loop draws it on the CPU).
    """
    chosen = torch.where(flip.to(moments.device)[:, None, None, None], moments[:, 1], moments[:, 0])
    mean, std = chosen.chunk(2, dim=1)
    return (mean + std * torch.randn_like(mean)) * scale
