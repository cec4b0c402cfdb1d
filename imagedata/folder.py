"""An ImageNet-style image folder (``root/<class>/<image>``) with the ADM center crop.

Classes are the sub-folders of ``root`` sorted by name (index = position), images are
found recursively inside each class folder, as torchvision's ``ImageFolder`` does.
Preprocessing is DiT's (``train.py``): ``center_crop_arr`` from ADM (Dhariwal & Nichol,
2021, ``guided_diffusion/image_datasets.py``), an optional horizontal flip, then
``[0, 255] -> [-1, 1]``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .inputs import Images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_LAYOUT = "expected an ImageNet-style folder: ROOT/<class name>/<image>.jpg (one sub-folder per class)"


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's center crop to ``image_size`` x ``image_size``.

    While the short side is at least twice ``image_size`` the image is halved with a
    BOX filter (cheap, alias-free downsampling); then one BICUBIC resize brings the
    short side to exactly ``image_size``; then the centre square is cut out (offsets
    rounded down). Returns a PIL image, as DiT's copy does, so it fits a transform chain.
    """
    while min(pil_image.size) >= 2 * image_size:
        half = (pil_image.size[0] // 2, pil_image.size[1] // 2)
        pil_image = pil_image.resize(half, resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    size = (round(pil_image.size[0] * scale), round(pil_image.size[1] * scale))
    pil_image = pil_image.resize(size, resample=Image.BICUBIC)
    left = (pil_image.size[0] - image_size) // 2
    top = (pil_image.size[1] - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(root: str) -> list[str]:
    if not os.path.exists(root):
        raise ValueError(f"image folder {root} does not exist; {_LAYOUT}")
    if not os.path.isdir(root):
        raise ValueError(f"{root} is a file, not a folder; {_LAYOUT}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; {_LAYOUT}")
    return classes


def _walk_images(folder: str):
    """Yield image paths under ``folder`` (recursively, following links) in sorted order."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_image(name):
                yield os.path.join(dirpath, name)


def _check_classes_have_images(root: str, classes: list[str], counts: list[int]) -> None:
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if len(empty) == len(classes):
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; {_LAYOUT}")
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(
            f"class folder(s) {shown} in {root} contain no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add images or remove the empty folders"
        )


def validate_image_folder(root: str) -> list[str]:
    """Fail fast on a bad ``--data-path``: check it exists, has class folders and each has an image.

    Stops at the first image of each class, so it is quick even on ImageNet. Returns
    the sorted class names. Raises ``ValueError`` with a one-line message otherwise.
    """
    root = os.fspath(root)
    classes = _class_folders(root)
    counts = [int(next(_walk_images(os.path.join(root, name)), None) is not None) for name in classes]
    _check_classes_have_images(root, classes, counts)
    return classes


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable or corrupt file raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {error}; delete or replace the file") from error


class ImageFolderDataset(Images, Dataset):
    """``(float CHW in [-1, 1], int label)`` from ``root/<class>/<image>``, center-cropped to ``image_size``.

    ``classes`` holds the sorted class names and ``samples`` the ``(path, label)`` pairs.
    ``flip`` mirrors an item horizontally with probability 1/2 (torch's global generator),
    as ``RandomHorizontalFlip`` does in DiT's training transform.
    """

    def __init__(self, root: str, image_size: int, flip: bool = True):
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        self.root, self.image_size, self.flip = os.fspath(root), int(image_size), bool(flip)
        self.classes = _class_folders(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        per_class = [list(_walk_images(os.path.join(self.root, name))) for name in self.classes]
        _check_classes_have_images(self.root, self.classes, [len(paths) for paths in per_class])
        self.samples = [(path, label) for label, paths in enumerate(per_class) for path in paths]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        array = np.asarray(center_crop_arr(load_rgb(path), self.image_size))
        x = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, label
