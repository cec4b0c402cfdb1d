"""LPIPS (Zhang et al. 2018), the perceptual distance REPA-E trains its VAE with.

The ``lpips`` package ships the learned linear heads (v0.1, VGG); the VGG16 backbone is torchvision's
ImageNet weights file ``vgg16-397923af.pth``, read from ``$DIFFUSION_LAB_CACHE/lpips/`` or torch.hub's
checkpoint folder, downloaded there when there is a network; offline, a one-line error names the file
and where to put it. ``random_backbone=True`` keeps a randomly initialised VGG (tests, the CPU demo):
then the distance shows the mechanics, not perceptual similarity.

REPA-E's LPIPS (its ``loss/lpips.py``) maps its inputs ``x -> 2x - 1`` before the network, as for images in
[0, 1], while its VAE loss hands it images in [-1, 1]: the network sees [-3, 1]. Its released VAEs were
trained with this distance, so it is the default here (``normalize=True``, the ``lpips`` package's name for
that map); ``normalize=False`` is standard LPIPS of [-1, 1] images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from models import hub

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
SLICES = (range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30))  # lpips' VGG16 slices


def vgg16_weights(path: str | None = None) -> Path:
    """The VGG16 weights file: ``path``, else the cache folders, else a download into the first."""
    if path:
        if not Path(path).is_file():
            raise ValueError(f"--lpips-vgg {path}: no such file (torchvision's {VGG16_FILE})")
        return Path(path)
    folders = [hub.cache_dir() / "lpips", Path(torch.hub.get_dir()) / "checkpoints"]
    for folder in folders:
        if (folder / VGG16_FILE).is_file():
            return folder / VGG16_FILE
    target = folders[0] / VGG16_FILE
    if hub.download(VGG16_URL, target, hash_prefix="397923af"):
        return target
    raise ValueError(f"LPIPS needs torchvision's VGG16 weights {VGG16_FILE}, which are not in "
                     f"{', '.join(map(str, folders))} and cannot be downloaded here; fetch {VGG16_URL} into "
                     f"{folders[0]}, or pass --lpips-vgg FILE")


class PerceptualLoss(torch.nn.Module):
    """``loss(x, y)`` -> (N,) LPIPS distances of images ``x, y`` in [-1, 1]: ``LPIPS(2x - 1, 2y - 1)`` as
    REPA-E (``normalize=True``), or standard ``LPIPS(x, y)``; frozen, always in eval mode."""

    def __init__(self, random_backbone: bool = False, vgg_path: str | None = None):
        super().__init__()
        import lpips

        # a random backbone is the same on every process (and in every run): drawn from a fixed seed
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # lpips asks torchvision for its backbone with a deprecated flag
            torch.manual_seed(0)
            self.lpips = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        if not random_backbone:
            features = torch.load(vgg16_weights(vgg_path), map_location="cpu", weights_only=True)
            renamed = {}
            for k, slice_ in enumerate(SLICES, start=1):
                for i in slice_:
                    for leaf in ("weight", "bias"):
                        if f"features.{i}.{leaf}" in features:
                            renamed[f"slice{k}.{i}.{leaf}"] = features[f"features.{i}.{leaf}"]
            self.lpips.net.load_state_dict(renamed, strict=True)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.lpips(x.float(), y.float(), normalize=normalize).flatten()


PIQ_LPIPS_FILE = "lpips_weights.pt"  # piq's release of LPIPS's linear heads


def piq_lpips() -> torch.nn.Module:
    """DMD2's regression distance: piq's LPIPS with average pooling (``replace_pooling=True``), one distance per
    image of images in [0, 1], frozen. piq reads torchvision's VGG16 and its own ``lpips_weights.pt`` through
    torch.hub's checkpoint folder (downloaded there when there is a network); offline, one line names both files."""
    import piq

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # piq asks torchvision for its VGG16 with a deprecated flag
            net = piq.LPIPS(replace_pooling=True, reduction="none")
    except Exception as error:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise ValueError(f"DMD2's LPIPS (piq) needs {VGG16_FILE} ({VGG16_URL}) and {PIQ_LPIPS_FILE} "
                         f"({piq.LPIPS._weights_url}) in {folder}, and could not get them "
                         f"({type(error).__name__}); download both there") from None
    return net.eval().requires_grad_(False)
