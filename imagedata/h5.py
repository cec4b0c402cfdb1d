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
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .inputs import Moments, StoredImages

IMAGES = "images.h5"
LABELS = "dataset.json"
VAE_ATTRS = ("vae_arch", "vae_ckpt_sha256")  # the latents file's attributes, written by cache_latents.py
CONVERT = ("preprocessing/dataset_tools.py convert --source IMAGE_FOLDER --transform center-crop-dhariwal "
           "--resolution 256x256")  # writes images.h5 with --dest DIR/images.h5


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


def open_h5(path: str | Path):
    """``h5py.File(path, "r")``, with one line naming the file when it cannot be read."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} cannot be read as HDF5 ({e}): it is truncated or no h5 file; write it "
                         "again") from None


def vae_identity(path: str | Path) -> dict[str, str]:
    """What ``cache_latents.py`` records about the VAE of a latents file (``vae_arch``, ``vae_ckpt_sha256``);
    empty for files that record nothing (REPA-E's own)."""
    with open_h5(path) as h5:
        return {k: str(h5.attrs[k]) for k in VAE_ATTRS if k in h5.attrs}


def _labels(h5, path: Path) -> dict[str, int]:
    if LABELS not in h5:
        raise ValueError(f"{path} has no {LABELS}: it is unfinished; write it again")
    try:
        return dict(json.loads(np.array(h5[LABELS]).tobytes().decode("utf-8"))["labels"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: entry {LABELS} is not a label list ({type(e).__name__}); write it again") from None


def _listing(path: Path, how: str) -> list[str]:
    """The names a complete file lists (its ``_h5.json``); ``how`` says what writes the file."""
    if not path.is_file():
        unfinished = path.with_name(path.name + ".partial")
        if unfinished.is_file():
            raise ValueError(f"{path}: no such file, only the unfinished {unfinished.name}; finish it: {how}")
        raise ValueError(f"{path}: no such file; write it: {how}")
    listing = listing_path(path)
    if not listing.is_file():
        raise ValueError(f"{path} has no {listing.name}: it was not finished; write it again: {how}")
    try:
        names = json.loads(listing.read_text())
    except ValueError as e:
        raise ValueError(f"{listing} is not a JSON list of entries ({e}); write {path.name} again: {how}") from None
    if not isinstance(names, list):
        raise ValueError(f"{listing} is not a JSON list of entries; write {path.name} again: {how}")
    return [str(n) for n in names]


def _check_entries(h5, path: Path, names: list[str]) -> None:
    """Every listed entry is in the file (a file cut short or edited loses some)."""
    by_folder: dict[str, list[str]] = {}
    for name in names:
        folder, _, leaf = name.rpartition("/")
        by_folder.setdefault(folder, []).append(leaf)
    missing = []
    for folder, leaves in by_folder.items():
        group = h5.get(folder) if folder else h5
        present = set(group.keys()) if group is not None and hasattr(group, "keys") else set()
        missing += [f"{folder}/{leaf}" if folder else leaf for leaf in leaves if leaf not in present]
    if missing:
        raise ValueError(f"{path}: {len(missing):,} of the {len(names):,} entries {listing_path(path).name} lists "
                         f"are missing (first {missing[0]}); write it again")


class H5Images(StoredImages, Dataset):
    """``images.h5`` of ``data_dir``: ``(uint8 (3, H, W) image, label)`` in sorted-name order.
    Opening checks the listed entries exist, the labels and the first and last images; the file is
    opened lazily in each process (loader workers included)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / IMAGES
        names = _listing(self.path, f"{CONVERT} --dest {self.path}")
        self.names = sorted(n for n in names if n.lower().endswith(".png"))
        if not self.names:
            raise ValueError(f"{self.path} holds no images")
        with open_h5(self.path) as h5:
            _check_entries(h5, self.path, self.names)
            table = _labels(h5, self.path)
        missing = [n for n in self.names if n not in table]
        if missing:
            raise ValueError(f"{self.path}: no label for {missing[0]} ({len(missing):,} images without one)")
        self.labels = np.array([table[n] for n in self.names], dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self._h5 = None
        self.image_size = self.image(0).shape[-1]  # the first and last decode, or the error names the entry
        self.image(len(self) - 1)

    def __len__(self) -> int:
        return len(self.names)

    def file(self):
        if self._h5 is None:
            self._h5 = open_h5(self.path)
        return self._h5

    def image(self, index: int) -> np.ndarray:
        name = self.names[index]
        try:
            raw = np.array(self.file()[name]).tobytes()
            array = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        except (KeyError, OSError, ValueError) as e:
            reason = "its bytes are no image" if isinstance(e, UnidentifiedImageError) else one_line(e)
            raise ValueError(f"{self.path}: entry {name} is not a readable image ({reason}); write the file "
                             "again") from None
        return array.transpose(2, 0, 1)

    def __getitem__(self, index: int):
        return torch.from_numpy(self.image(index).copy()), torch.tensor(self.labels[index])

    def close(self) -> None:
        """Close the open file handles (they reopen when read)."""
        for name in ("_h5", "_latents"):
            if getattr(self, name, None) is not None:
                getattr(self, name).close()
                setattr(self, name, None)

    def __getstate__(self):  # loader workers open their own handle
        return {**self.__dict__, "_h5": None}


class H5ImagesAndLatents(Moments, H5Images):
    """``images.h5`` beside ``{latents_name}.h5``: ``(uint8 image, float32 (2C, h, w) moments, label)``,
    paired by position in sorted-name order, labels from the latents' file (REPA-E ``CustomH5Dataset``).
    ``vae_identity``: the VAE the latents file records (empty for REPA-E's files). The latents carry no scale
    (the SiT normalises them with its BatchNorm)."""

    latent_scale = 1.0

    def __init__(self, data_dir: str | Path, latents_name: str):
        super().__init__(data_dir)
        self.latents_path = Path(data_dir) / f"{latents_name}.h5"
        how = (f"cache_latents.py --vae-arch ARCH --vae-ckpt-path VAE.pt --vae-latents-name {latents_name} "
               f"--data-dir {data_dir} --output-dir {data_dir}")
        names = _listing(self.latents_path, how)
        self.latent_names = sorted(n for n in names if n.lower().endswith(".npy"))
        if len(self.latent_names) != len(self.names):
            raise ValueError(f"{self.latents_path} holds {len(self.latent_names):,} latents for {len(self.names):,} "
                             f"images in {self.path}; cache them again: {how}")
        with open_h5(self.latents_path) as h5:
            _check_entries(h5, self.latents_path, self.latent_names)
            table = _labels(h5, self.latents_path)
        self.labels = np.array([table[n] for n in self.latent_names], dtype=np.int64)
        self.vae_identity = vae_identity(self.latents_path)
        self._latents = None
        first, last = self.moments(0), self.moments(len(self) - 1)
        self.moments_shape = first.shape
        if first.ndim != 3 or first.shape[0] % 2 or last.shape != first.shape:
            raise ValueError(f"{self.latents_path}: entries {self.latent_names[0]} {first.shape} and "
                             f"{self.latent_names[-1]} {last.shape} are not both (2C, h, w) moments; cache them "
                             f"again: {how}")

    def moments(self, index: int) -> np.ndarray:
        """float32 (2C, h, w): cat(mean, std) of entry ``index``."""
        if self._latents is None:
            self._latents = open_h5(self.latents_path)
        name = self.latent_names[index]
        try:
            return np.array(self._latents[name], dtype=np.float32)
        except (KeyError, OSError, ValueError, TypeError) as e:
            raise ValueError(f"{self.latents_path}: entry {name} cannot be read as latents ({one_line(e)}); cache "
                             "them again") from None

    def __getitem__(self, index: int):
        moments = torch.from_numpy(self.moments(index))
        return torch.from_numpy(self.image(index).copy()), moments, torch.tensor(self.labels[index])

    def __getstate__(self):
        return {**self.__dict__, "_h5": None, "_latents": None}


def one_line(e: BaseException) -> str:
    text = str(e).strip().strip('"')
    return text.splitlines()[-1] if text else type(e).__name__
