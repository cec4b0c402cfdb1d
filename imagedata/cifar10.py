"""CIFAR-10 (Krizhevsky, 2009) upscaled to ``image_size``: the U-Net system's dataset.

The python version of the set (``cifar-10-batches-py/``: five training batches and a test
batch, pickled dicts of ``data`` (N, 3072) uint8 rows in CHW order and ``labels``) is read
from ``root``; when it is not there torchvision downloads it once. Each 32 x 32 image is
upscaled with bicubic interpolation (clamped to [0, 255]) and mapped to [-1, 1]; the
training loop flips.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .inputs import Images

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
DOWNLOAD_HOST = "www.cs.toronto.edu"  # torchvision's CIFAR-10 source


def ensure_cifar10(root: str | Path) -> Path:
    """``root/cifar-10-batches-py``, downloaded by torchvision if missing; one-line error if it cannot be."""
    folder = Path(root) / FOLDER
    if all((folder / name).is_file() for name in TRAIN_BATCHES):
        return folder
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    except Exception as err:  # no network, no permission, a corrupt archive
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"CIFAR-10 is not in {folder} and could not be downloaded ({reason}); put the python version "
            f"(cifar-10-python.tar.gz, extracted) in {root}, or train on --dataset builtin"
        ) from None
    return folder


def default_dataset(root: str | Path) -> str:
    """The U-Net's data when none is named: ``cifar10`` if it is in ``root`` or can be downloaded
    (the host answers within 3 s), else ``builtin``, so that everything runs offline."""
    if all((Path(root) / FOLDER / name).is_file() for name in TRAIN_BATCHES):
        return "cifar10"
    try:
        socket.create_connection((DOWNLOAD_HOST, 443), timeout=3).close()
    except OSError:
        return "builtin"
    try:
        ensure_cifar10(root)
    except ValueError:
        return "builtin"
    return "cifar10"


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return data, list(entry["labels"])
    except Exception as err:
        raise ValueError(f"{path} is not a CIFAR-10 batch ({type(err).__name__}: {err}); delete "
                         f"{path.parent} to download it again") from None


class CIFAR10Images(Images, Dataset):
    """The 50,000 training images (or the 10,000 test images) as ``(float CHW in [-1, 1], label)``."""

    def __init__(self, root: str | Path, image_size: int = 128, train: bool = True):
        folder = ensure_cifar10(root)
        parts = [_read_batch(folder / name) for name in (TRAIN_BATCHES if train else ("test_batch",))]
        self.data = np.concatenate([d for d, _ in parts])
        self.targets = [label for _, labels in parts for label in labels]
        self.image_size = int(image_size)
        self.classes = list(CLASSES)
        self.num_classes = len(CLASSES)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.data[index]).float()[None]
        if self.image_size != 32:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return x[0].clamp(0, 255) / 127.5 - 1.0, self.targets[index]
