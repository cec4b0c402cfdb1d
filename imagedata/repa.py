"""The REPA / REG data layout: raw images beside the VAE posterior moments of each image.

Layout of a ``data_dir`` written by ``preprocessing/dataset_tools.py``::

  imagenet_256_vae/                    REG's name; REPA calls the same folder ``images/`` (both are read)
    00000/img00000000.png              uint8 RGB, square, ADM center crop, uncompressed PNG
    ...                                (image ``idx`` lives in folder ``idx // 1000``)
    dataset.json                       {"labels": [["00000/img00000000.png", label], ...]}
  vae-sd/
    00000/img-mean-std-00000000.npy    float32 (2C, H/8, W/8) = cat(mean, std) of q(z|x), unscaled
    ...
    dataset.json                       {"labels": [["00000/img-mean-std-00000000.npy", label], ...]}

Either folder may be a zip archive of the same content instead (``imagenet_256_vae.zip``,
``vae-sd.zip``). As in REG's ``dataset.py`` (``CustomDataset``), images and latents are
paired by position in sorted-name order and labels come from ``vae-sd/dataset.json``; the
trainer draws ``z = (mean + std * eps) * 0.18215`` each step (REG ``train.py``,
``sample_posterior``), with no flip augmentation.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .folder import IMAGE_EXTENSIONS
from .inputs import Moments

IMAGE_DIRS = ("imagenet_256_vae", "images")  # REG's name first, then REPA's
LATENT_DIR = "vae-sd"
LABELS = "dataset.json"
_CONVERT = "preprocessing/dataset_tools.py convert"
_ENCODE = "preprocessing/dataset_tools.py encode"


def is_image_name(name: str) -> bool:
    """An image file by extension, not hidden and not inside a hidden folder (``name`` is a POSIX path)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not any(p.startswith(".") for p in name.split("/"))


class Archive:
    """The files of a folder or a zip archive, by relative POSIX name.

    A zip is opened lazily in each process, so the object can go to DataLoader workers.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        self._zip, self._pid = None, None

    def __getstate__(self):
        return {**self.__dict__, "_zip": None, "_pid": None}

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(f"{self.path} is not a readable zip archive ({error}); "
                                 "re-create it or pass a folder") from None
        return self._zip

    def names(self) -> list[str]:
        """Every file, unsorted."""
        if self.is_zip:
            return [n for n in self._zipfile().namelist() if not n.endswith("/")]
        names = []
        for dirpath, _dirnames, filenames in os.walk(self.path, followlinks=True):
            rel = Path(dirpath).relative_to(self.path).as_posix()
            names += filenames if rel == "." else [f"{rel}/{f}" for f in filenames]
        return names

    def exists(self, name: str) -> bool:
        if self.is_zip:
            try:
                return bool(self._zipfile().getinfo(name))
            except KeyError:
                return False
        return (self.path / name).is_file()

    def where(self, name: str) -> str:
        return f"{self.path}/{name}"

    def read(self, name: str) -> bytes:
        if self.is_zip:
            return self._zipfile().read(name)
        return (self.path / name).read_bytes()


def read_rgb(archive: Archive, name: str) -> Image.Image:
    """Image ``name`` as RGB; a corrupt file raises ``ValueError`` naming it."""
    try:
        with Image.open(io.BytesIO(archive.read(name))) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, KeyError) as error:
        reason = "not a readable image" if isinstance(error, UnidentifiedImageError) else error
        raise ValueError(f"cannot read image {archive.where(name)}: {reason}; delete or replace the file") from None


def read_labels(archive: Archive, remedy: str) -> dict[str, int]:
    """``{file name: int label}`` from the archive's ``dataset.json``; ``remedy`` ends each error."""
    where = archive.where(LABELS)
    if not archive.exists(LABELS):
        raise ValueError(f"{where} is missing (an interrupted or unfinished run?); {remedy}")
    try:
        data = json.loads(archive.read(LABELS))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{where} is not valid JSON ({error}); {remedy}") from None
    if not isinstance(data, dict) or "labels" not in data:
        raise ValueError(f"{where} has no 'labels' entry; {remedy}")
    labels = data["labels"]
    if labels is None:
        raise ValueError(f"{where} holds no labels (the source had no class folders); {remedy}")
    try:
        table = {str(name): label for name, label in labels}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'labels' must be a list of [file name, class index] pairs; {remedy}") from None
    bad = [n for n, label in table.items() if not isinstance(label, int) or isinstance(label, bool) or label < 0]
    if bad:
        raise ValueError(f"{where}: the label of {bad[0]} is {table[bad[0]]!r}, not a class index; {remedy}")
    return table


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for path in (root / name, root / f"{name}.zip"):
            if path.exists():
                return path
    return None


def is_repa_layout(path: str | Path) -> bool:
    """Whether ``path`` is (the start of) a REPA/REG data folder: it holds ``vae-sd`` or ``imagenet_256_vae``.

    A folder with only REPA's ``images/`` is not enough: that is also a plausible class name.
    """
    root = Path(path)
    return root.is_dir() and _find(root, (LATENT_DIR, IMAGE_DIRS[0])) is not None


class REPADataset(Moments, Dataset):
    """``(image uint8 (3, H, W), moments float32 (2C, h, w) = cat(mean, std), label int64)`` per item.

    ``data_dir`` holds ``imagenet_256_vae/`` (REG) or ``images/`` (REPA; the first found
    wins, a ``.zip`` of either counts) and ``vae-sd/`` (or ``vae-sd.zip``); see the module
    docstring. ``image_size``, ``moments_shape`` and ``num_classes`` describe the data.
    """

    def __init__(self, data_dir: str | Path):
        root = Path(data_dir)
        if not root.is_dir():
            raise ValueError(f"REPA/REG data folder {root} does not exist or is not a folder")
        image_path, latent_path = _find(root, IMAGE_DIRS), _find(root, (LATENT_DIR,))
        if image_path is None:
            raise ValueError(f"{root} has no {IMAGE_DIRS[0]}/ (REG) or {IMAGE_DIRS[1]}/ (REPA) image folder; "
                             f"create it with `{_CONVERT} --dest {root / IMAGE_DIRS[0]}`")
        if latent_path is None:
            raise ValueError(f"{root} has no {LATENT_DIR}/ latent folder; create it with "
                             f"`{_ENCODE} --source {image_path} --dest {root / LATENT_DIR}`")
        self.images, self.latents = Archive(image_path), Archive(latent_path)
        self.image_fnames = sorted(n for n in self.images.names() if is_image_name(n))
        self.feature_fnames = sorted(n for n in self.latents.names() if n.endswith(".npy"))
        redo_encode = f"re-run `{_ENCODE} --source {image_path} --dest {latent_path}` into an empty --dest"
        if not self.image_fnames:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_path}; "
                             f"fill it with `{_CONVERT}`")
        if not self.feature_fnames:
            raise ValueError(f"no latents (.npy) in {latent_path}; {redo_encode}")
        if len(self.image_fnames) != len(self.feature_fnames):
            raise ValueError(f"{image_path} holds {len(self.image_fnames):,} images but {latent_path} holds "
                             f"{len(self.feature_fnames):,} latents (items pair by sorted name); {redo_encode}")
        table = read_labels(self.latents, redo_encode)
        missing = [n for n in self.feature_fnames if n not in table]
        if missing:
            raise ValueError(f"{self.latents.where(LABELS)} has no label for {missing[0]} "
                             f"({len(missing):,} latents without one); {redo_encode}")
        self.labels = np.array([table[n] for n in self.feature_fnames], dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self.image_size = read_rgb(self.images, self.image_fnames[0]).size[1]
        self.moments_shape = tuple(self._moments(0).shape)

    def __len__(self) -> int:
        return len(self.feature_fnames)

    def _moments(self, index: int) -> np.ndarray:
        name = self.feature_fnames[index]
        try:
            moments = np.load(io.BytesIO(self.latents.read(name)), allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read latent {self.latents.where(name)}: {error}; "
                             "re-run the encode step") from None
        if moments.ndim != 3 or moments.shape[0] % 2:
            raise ValueError(f"latent {self.latents.where(name)} has shape {moments.shape}, not (2C, h, w)")
        return moments.astype(np.float32, copy=False)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = np.asarray(read_rgb(self.images, self.image_fnames[index])).transpose(2, 0, 1)
        moments = self._moments(index)
        return (torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(moments),
                torch.tensor(self.labels[index]))
