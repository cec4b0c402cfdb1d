"""Image sources for the evaluator: the ``arr_0`` of an ``.npz`` read in batches, or an image folder.

Every source is a sequence of uint8 HWC RGB images with ``len`` and ``batches(batch_size,
start, stop)``, which yields uint8 NHWC numpy arrays in order. An ``.npz`` written by
``np.savez`` (what ``sample_ddp.py`` and ADM's reference batches use) stores ``arr_0``
uncompressed, so it is memory-mapped and any range is read without loading the rest; a
compressed one is decompressed as a stream. A folder is read as ``imagedata/folder.py``
reads training images: ADM's center crop to ``image_size``.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # processes decoding a folder's images
ADM_FORMAT = "uint8 images in [0, 255], shape (N, H, W, 3), as sample_ddp.py and ADM's reference batches store them"


def _check_images(name: str, shape: tuple, dtype: np.dtype) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{name} is {dtype} of shape {tuple(shape)}; expected {ADM_FORMAT}")
    if shape[0] == 0:
        raise ValueError(f"{name} holds no images")


class NpzImages:
    """``arr_0`` (or ``key``) of an ``.npz`` file, read a batch at a time."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n.removesuffix(".npy") for n in archive.namelist()]
                if key not in names:
                    raise ValueError(f"{self.path} holds {sorted(names)} but no {key}; expected {key} with {ADM_FORMAT}")
                self._info = archive.getinfo(f"{key}.npy")
                with archive.open(self._info) as member:
                    shape, fortran, dtype = _read_npy_header(member)
                    self._data_start = member.tell()
        except zipfile.BadZipFile:
            raise ValueError(f"{self.path} is not an .npz file (np.savez writes one)") from None
        _check_images(f"{key} of {self.path}", shape, dtype)
        if fortran:
            raise ValueError(f"{key} of {self.path} is stored in Fortran order; save it with np.savez(np.ascontiguousarray(x))")
        self.shape = shape
        self._row_bytes = int(np.prod(shape[1:]))
        self._memmap = None
        if self._info.compress_type == zipfile.ZIP_STORED:
            offset = _member_data_offset(self.path, self._info) + self._data_start
            self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=offset, shape=shape)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        stop = len(self) if stop is None else stop
        if self._memmap is not None:
            for i in range(start, stop, batch_size):
                yield np.array(self._memmap[i : min(i + batch_size, stop)])
            return
        with zipfile.ZipFile(self.path) as archive, archive.open(self._info) as member:
            member.seek(self._data_start + start * self._row_bytes)  # decompresses and skips what is before
            for i in range(start, stop, batch_size):
                n = min(batch_size, stop - i)
                data = member.read(n * self._row_bytes)
                yield np.frombuffer(data, dtype=np.uint8).reshape(n, *self.shape[1:])


def _read_npy_header(member) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its 30-byte local header, name and extra field."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path} is a damaged .npz file")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


class ArrayImages:
    """An in-memory uint8 NHWC array (e.g. samples that were never written to disk)."""

    def __init__(self, images: np.ndarray, name: str = "images"):
        images = np.asarray(images)
        _check_images(name, images.shape, images.dtype)
        self.images, self.shape = images, images.shape

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        stop = len(self) if stop is None else stop
        for i in range(start, stop, batch_size):
            yield np.ascontiguousarray(self.images[i : min(i + batch_size, stop)])


class FolderImages:
    """``root/<class>/<image>`` center-cropped to ``image_size`` (ADM's crop), read by ``num_workers`` workers."""

    def __init__(self, root: str | os.PathLike, image_size: int, num_workers: int = DEFAULT_WORKERS):
        from imagedata.folder import ImageFolderDataset

        self.dataset = ImageFolderDataset(root, image_size, flip=False)
        self.paths = [path for path, _ in self.dataset.samples]
        self.image_size, self.num_workers = int(image_size), num_workers
        self.shape = (len(self.paths), self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        from imagedata.folder import center_crop_arr, load_rgb

        return np.asarray(center_crop_arr(load_rgb(self.paths[index]), self.image_size))

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        import torch

        stop = len(self) if stop is None else stop
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self, range(start, stop)), batch_size=batch_size, num_workers=self.num_workers,
            collate_fn=np.stack,
        )
        yield from loader


def open_images(source, image_size: int | None = None, num_workers: int = DEFAULT_WORKERS):
    """A source for ``source``: a path to an ``.npz`` (its ``arr_0``) or an image folder, or a uint8 array."""
    if isinstance(source, (NpzImages, ArrayImages, FolderImages)):
        return source
    if isinstance(source, np.ndarray):
        return ArrayImages(source)
    path = Path(source)
    if path.is_dir():
        if image_size is None:
            raise ValueError(f"{path} is a folder: pass --image-size, the resolution to center-crop its images to")
        return FolderImages(path, image_size, num_workers)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return NpzImages(path)
