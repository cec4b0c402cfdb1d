"""REPA-E's data layout: images and cached VAE latents in HDF5 files (read and written with h5py).

A ``data_dir`` holds::

  images.h5            00000/img00000000.png -> the PNG file's bytes (numpy ``S`` string; uncompressed PNG,
                       square, ADM center crop), one entry per image, plus dataset.json ->
                       {"labels": [["00000/img00000000.png", label], ...]} as bytes
  images_h5.json       the list of the entries' names
  {name}.h5            00000/img-mean-std-00000000.npy -> float32 (2C, h, w) = cat(mean, std) of the VAE's
                       posterior (unscaled), plus dataset.json with the labels under these names
  {name}_h5.json       the list of the entries' names

Images and latents pair up by position in sorted-name order; labels come from each file's
``dataset.json``. ``preprocessing/dataset_tools.py convert --dest DIR/images.h5`` writes the images
from an image folder, a convert output or the built-in set; ``cache_latents.py`` the latents.
A file is complete when its ``_h5.json`` list exists (written last).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGES = "images.h5"
LABELS = "dataset.json"


def listing_path(h5_path: str | Path) -> Path:
    """``images.h5`` -> ``images_h5.json``."""
    h5_path = Path(h5_path)
    return h5_path.with_name(h5_path.stem + "_h5.json")


def write_entry(h5, name: str, data) -> None:
    """Store ``data`` under ``name`` ("00000/img00000000.png"), creating its groups."""
    group = h5
    *folders, leaf = name.strip("/").split("/")
    for folder in folders:
        group = group.require_group(folder)
    group.create_dataset(leaf, data=data)


def write_bytes(h5, name: str, data: bytes) -> None:
    write_entry(h5, name, np.array(data, dtype="S"))


def finish(h5, labels: list[list]) -> list[str]:
    """Write ``dataset.json`` into the open file; returns the names of all its entries."""
    write_bytes(h5, LABELS, json.dumps({"labels": labels}).encode("utf-8"))
    names: list[str] = []
    h5.visititems(lambda name, obj: names.append(name))
    return names


def write_listing(h5_path: str | Path, names: list[str]) -> None:
    """The list of entries beside the (closed, complete) file: written last, the mark of a complete file."""
    tmp = listing_path(h5_path).with_name(listing_path(h5_path).name + ".tmp")
    tmp.write_text(json.dumps(names, indent=2))
    tmp.replace(listing_path(h5_path))


def _labels(h5, path: Path) -> dict[str, int]:
    if LABELS not in h5:
        raise ValueError(f"{path} has no {LABELS}: it is unfinished; write it again")
    return dict(json.loads(np.array(h5[LABELS]).tobytes().decode("utf-8"))["labels"])


def _check_complete(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{path}: no such file (preprocessing/dataset_tools.py convert --dest {path} writes one)")
    if not listing_path(path).is_file():
        raise ValueError(f"{path} has no {listing_path(path).name}: it was not finished; write it again")


class H5Images(Dataset):
    """``images.h5`` of ``data_dir``: ``(uint8 (3, H, W) image, label)`` in sorted-name order.
    The file is opened lazily in each process (loader workers included)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / IMAGES
        _check_complete(self.path)
        names = json.loads(listing_path(self.path).read_text())
        self.names = sorted(n for n in names if n.lower().endswith(".png"))
        if not self.names:
            raise ValueError(f"{self.path} holds no images")
        import h5py

        with h5py.File(self.path, "r") as h5:
            table = _labels(h5, self.path)
        missing = [n for n in self.names if n not in table]
        if missing:
            raise ValueError(f"{self.path}: no label for {missing[0]} ({len(missing):,} images without one)")
        self.labels = np.array([table[n] for n in self.names], dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self._h5 = None

    def __len__(self) -> int:
        return len(self.names)

    def file(self):
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def image(self, index: int) -> np.ndarray:
        raw = np.array(self.file()[self.names[index]]).tobytes()
        array = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        return array.transpose(2, 0, 1)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.image(index).copy()), torch.tensor(self.labels[index])

    def __getstate__(self):  # loader workers open their own handle
        return {**self.__dict__, "_h5": None}


class H5ImagesAndLatents(H5Images):
    """``images.h5`` beside ``{latents_name}.h5``: ``(uint8 image, float32 (2C, h, w) moments, label)``,
    paired by position in sorted-name order, labels from the latents' file (REPA-E ``CustomH5Dataset``)."""

    def __init__(self, data_dir: str | Path, latents_name: str):
        super().__init__(data_dir)
        self.latents_path = Path(data_dir) / f"{latents_name}.h5"
        _check_complete(self.latents_path)
        names = json.loads(listing_path(self.latents_path).read_text())
        self.latent_names = sorted(n for n in names if n.lower().endswith(".npy"))
        if len(self.latent_names) != len(self.names):
            raise ValueError(f"{self.latents_path} holds {len(self.latent_names):,} latents for {len(self.names):,} "
                             f"images in {self.path}; cache them again (cache_latents.py)")
        import h5py

        with h5py.File(self.latents_path, "r") as h5:
            table = _labels(h5, self.latents_path)
            self.moments_shape = tuple(h5[self.latent_names[0]].shape)
        self.labels = np.array([table[n] for n in self.latent_names], dtype=np.int64)
        self._latents = None

    def __getitem__(self, index: int):
        if self._latents is None:
            import h5py

            self._latents = h5py.File(self.latents_path, "r")
        moments = np.array(self._latents[self.latent_names[index]], dtype=np.float32)
        return torch.from_numpy(self.image(index).copy()), torch.from_numpy(moments), torch.tensor(self.labels[index])

    def __getstate__(self):
        return {**self.__dict__, "_h5": None, "_latents": None}
