"""DMD2's LMDB datasets, read and written in the original key format (through the ``lmdb`` package).

An LMDB folder (``data.mdb``) holds named arrays, one entry per row, as DMD2's
``main/data/create_imagenet_lmdb.py`` and ``main/data/create_lmdb_iterative.py`` write them::

  {name}_{i}_data    row i of array ``name``: its raw bytes (``row.tobytes()``, C order), or a
                     string's UTF-8 bytes
  {name}_shape       the array's shape as text, "N d1 d2 ..." (N = number of rows); written last,
                     so an interrupted write has no shapes

The bytes carry no dtype: the reader is told it (DMD2 ``main/utils.py``, ``retrieve_row_from_lmdb``).
Two layouts are used:

- ImageNet 64x64 (``imagenet-64x64_lmdb``): ``images`` uint8 (N, 3, 64, 64) CHW and ``labels`` int64 (N,)
  -> ``LMDBImages``.
- Stable Diffusion (``sd*_vae_latents_laion_500k_lmdb``): ``latents`` float16 (N, C, h, w), scaled VAE
  latents, and ``prompts`` strings (N,) -> ``LMDBLatentsPrompts``.

Readers open the environment read-only without a lock file, as DMD2's datasets do. The ``lmdb``
package refuses to open one environment twice in a process, so every reader of a path shares one
handle per process (``shared_env``); a forked DataLoader worker closes the copy it inherited and
opens its own, as LMDB requires.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

from .inputs import Images

DATA_FILE = "data.mdb"
MAP_SIZE = 1 << 30  # bytes a writer maps at first; it doubles whenever the data outgrows it
_MAKE = "preprocessing/make_lmdb.py"
_SHARED: dict[tuple[int, int], tuple[int, lmdb.Environment]] = {}  # data.mdb (device, inode) -> (pid, handle)


def _key(name: str, i: int) -> bytes:
    return f"{name}_{i}_data".encode()


def _shape_text(shape: Sequence[int]) -> bytes:
    return " ".join(str(int(n)) for n in shape).encode()


def _rows(name: str, value) -> tuple[list[bytes], tuple[int, ...], str]:
    """The rows of one array as bytes, with the shape and dtype of a row ("str" for strings)."""
    array = np.asarray(value)
    if array.ndim == 0:
        raise ValueError(f"array {name!r} has no rows (a scalar); pass an array of shape (N, ...)")
    if array.dtype.kind in "UO":  # strings, stored as UTF-8 (DMD2's prompts)
        if array.ndim != 1 or not all(isinstance(s, str) for s in array):
            raise ValueError(f"array {name!r}: only a flat list of strings can be stored as text")
        return [s.encode("utf-8") for s in array], (), "str"
    if array.dtype.kind not in "biuf":
        raise ValueError(f"array {name!r} has dtype {array.dtype}: only numbers and strings can be stored")
    return [row.tobytes() for row in array], array.shape[1:], array.dtype.str


class LMDBWriter:
    """Writes a new LMDB in DMD2's layout, a batch of rows at a time; ``close`` writes the shapes.

    ``append({"images": uint8 (n, 3, H, W), "labels": int64 (n,)})`` adds ``n`` rows to every array
    (all arrays grow together, as in DMD2's writers). A context manager: leaving it by an exception
    writes no shapes, so the unfinished LMDB is refused by the readers.
    """

    def __init__(self, path: str | Path, map_size: int = MAP_SIZE):
        self.path = Path(path)
        if (self.path / DATA_FILE).exists():
            raise ValueError(f"{self.path} already holds an LMDB; write into a new folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=map_size)
        self.count = 0
        self.rows: dict[str, tuple[tuple[int, ...], str]] = {}  # name -> (row shape, dtype)

    def append(self, arrays: Mapping[str, np.ndarray | Sequence[str]]) -> None:
        prepared = {name: _rows(name, value) for name, value in arrays.items()}
        lengths = {name: len(rows) for name, (rows, _, _) in prepared.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the arrays of one append need as many rows each, got {lengths}")
        layout = {name: (shape, dtype) for name, (_, shape, dtype) in prepared.items()}
        if self.rows and layout != self.rows:
            raise ValueError(f"rows {layout} do not match the rows written before {self.rows}")
        self.rows = layout
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for name, (rows, _, _) in prepared.items():
                        for i, row in enumerate(rows):
                            txn.put(_key(name, self.count + i), row)
                break
            except lmdb.MapFullError:  # the transaction was aborted: map more and write it again
                self.env.set_mapsize(2 * self.env.info()["map_size"])
        self.count += next(iter(lengths.values()), 0)

    def close(self) -> None:
        """Write ``{name}_shape`` for every array (the mark of a finished LMDB) and close."""
        with self.env.begin(write=True) as txn:
            for name, (shape, _) in self.rows.items():
                txn.put(f"{name}_shape".encode(), _shape_text((self.count, *shape)))
        self.env.close()

    def __enter__(self) -> LMDBWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.env.close()


def check_new_lmdb(dest: str | Path, flag: str) -> Path:
    """``dest`` as a folder a new LMDB may be written to: absent or empty, else one line naming ``flag``."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{flag} {dest} exists and is not empty; choose a new folder or delete it")
    return dest


@contextlib.contextmanager
def new_lmdb(dest: str | Path, flag: str) -> Iterator[LMDBWriter]:
    """An ``LMDBWriter`` into ``DEST.partial`` (what an interrupted run left there is removed first), renamed to
    ``dest`` when the block ends without error, so ``dest`` only ever holds a complete LMDB."""
    dest = check_new_lmdb(dest, flag)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with LMDBWriter(partial) as writer:
        yield writer
    if dest.exists():
        dest.rmdir()  # empty, checked above
    partial.rename(dest)


def write_arrays(path: str | Path, arrays: Mapping[str, np.ndarray | Sequence[str]], map_size: int = MAP_SIZE) -> None:
    """Write whole arrays (equal numbers of rows) into a new LMDB at ``path`` in DMD2's layout."""
    with LMDBWriter(path, map_size) as writer:
        writer.append(arrays)


def open_lmdb(path: str | Path) -> lmdb.Environment:
    """The LMDB at ``path`` opened read-only without a lock, as DMD2's datasets open it."""
    path = Path(path)
    if not (path / DATA_FILE).is_file():
        raise ValueError(f"{path} holds no LMDB (no {DATA_FILE}); make one with {_MAKE} or unzip DMD2's "
                         "imagenet-64x64_lmdb.zip there")
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as error:
        raise ValueError(f"{path} is not a readable LMDB ({error}); write it again") from None
    check_complete(env, path / DATA_FILE)
    return env


def check_complete(env: lmdb.Environment, data_file: Path) -> None:
    """LMDB maps ``data.mdb`` into memory, so reading a page past the end of a truncated file kills the process
    (SIGBUS): the file must hold every page up to the last one its header names (``last_pgno``)."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = data_file.stat().st_size
    if size < needed:
        env.close()
        raise ValueError(f"{data_file} is truncated: {size:,} bytes of the {needed:,} its LMDB header names (an "
                         "interrupted copy or unzip?); copy or unzip it again")


def shared_env(path: str | Path) -> lmdb.Environment:
    """This process's read-only handle on the LMDB at ``path``, opened on first use."""
    path = Path(path)
    try:
        stat = (path / DATA_FILE).stat()
    except OSError:
        return open_lmdb(path)  # which says what is missing
    key = (stat.st_dev, stat.st_ino)
    pid, env = _SHARED.get(key, (None, None))
    if env is not None and pid != os.getpid():
        env.close()  # a handle inherited through fork: closes this process's copy only (no lock file)
        env = None
    if env is None:
        env = open_lmdb(path)
        _SHARED[key] = (os.getpid(), env)
    return env


def read_shape(env: lmdb.Environment, name: str) -> tuple[int, ...] | None:
    """The shape stored under ``{name}_shape``, or None when there is no such key."""
    with env.begin() as txn:
        text = txn.get(f"{name}_shape".encode())
    if text is None:
        return None
    try:
        return tuple(int(n) for n in text.decode().split())
    except ValueError:
        raise ValueError(f"{env.path()}: {name}_shape is {text[:40]!r}, not 'N d1 d2 ...'; "
                         "write the LMDB again") from None


def read_row(env: lmdb.Environment, name: str, i: int, dtype, shape: Sequence[int]) -> np.ndarray:
    """Row ``i`` of array ``name`` as a read-only ``dtype`` array of ``shape`` (DMD2's retrieve_row_from_lmdb)."""
    with env.begin() as txn:
        data = txn.get(_key(name, i))
    if data is None:
        raise ValueError(f"{env.path()} has no row {i} of {name!r}: the LMDB is incomplete; write it again")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(f"{env.path()}: row {i} of {name!r} has {len(data)} bytes, not {expected} "
                         f"({np.dtype(dtype).name} {tuple(shape)}); the LMDB does not hold this layout")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def read_text(env: lmdb.Environment, name: str, i: int) -> str:
    """Row ``i`` of a string array (DMD2's prompts), decoded from UTF-8."""
    with env.begin() as txn:
        data = txn.get(_key(name, i))
    if data is None:
        raise ValueError(f"{env.path()} has no row {i} of {name!r}: the LMDB is incomplete; write it again")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{env.path()}: row {i} of {name!r} is not UTF-8 text; the LMDB does not hold "
                         "this layout") from None


class _LMDBDataset(Dataset):
    """The environment, looked up again in each new process (a handle must not cross a fork)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._env, self._pid = None, None

    def env(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = shared_env(self.path), os.getpid()
        return self._env

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows of {self.path}")
        return int(index)

    def __getstate__(self):
        return {**self.__dict__, "_env": None, "_pid": None}


def _require_shape(env: lmdb.Environment, name: str, expected: str, remedy: str) -> tuple[int, ...]:
    shape = read_shape(env, name)
    if shape is None:
        raise ValueError(f"{env.path()} has no {name}_shape key, so it is not a finished {expected} LMDB "
                         f"(an interrupted write?); {remedy}")
    if not shape or shape[0] < 1:
        raise ValueError(f"{env.path()}: {name}_shape is {shape}, which holds no rows; {remedy}")
    return shape


def _check_rows(env: lmdb.Environment, name: str, count: int, dtype, shape, remedy: str) -> None:
    """The first and the last row are there and have the right size (reading every row would be slow)."""
    try:
        for i in {0, count - 1}:
            read_row(env, name, i, dtype, shape)
    except ValueError as error:
        raise ValueError(f"{error}; {remedy}") from None


class LMDBImages(Images, _LMDBDataset):
    """DMD2's ImageNet LMDB: ``(float CHW in [-1, 1], int label)`` from uint8 ``images`` and int64 ``labels``.

    ``targets`` holds every label (read once, at opening), ``num_classes`` is the largest label + 1,
    ``classes`` their names ("0", "1", ...) and ``image_size`` the side of the square images.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        remedy = f"write it again with {_MAKE} or unzip DMD2's imagenet-64x64_lmdb.zip again"
        env = self.env()
        self.shape = _require_shape(env, "images", "DMD2 image", remedy)
        if len(self.shape) != 4 or self.shape[1] != 3 or self.shape[2] != self.shape[3]:
            raise ValueError(f"{self.path}: images_shape is {self.shape}, not (N, 3, H, H) (square RGB "
                             "images, CHW); it is not DMD2's image layout")
        labels_shape = _require_shape(env, "labels", "DMD2 image", remedy)
        if labels_shape != self.shape[:1]:
            raise ValueError(f"{self.path}: labels_shape {labels_shape} does not match the {self.shape[0]:,} "
                             f"images; {remedy}")
        _check_rows(env, "images", self.shape[0], np.uint8, self.shape[1:], remedy)
        labels = self._read_labels(env, self.shape[0], remedy)
        self.image_size = self.shape[2]
        self.targets = labels.tolist()
        self.num_classes = int(labels.max()) + 1
        self.classes = [str(i) for i in range(self.num_classes)]

    def _read_labels(self, env: lmdb.Environment, count: int, remedy: str) -> np.ndarray:
        """Every ``labels_{i}_data`` in one pass of a cursor (keys sort as text, so the index is parsed)."""
        labels, seen = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=bool)
        with env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(b"labels_"):
                for key, value in cursor:
                    if not key.startswith(b"labels_"):
                        break
                    if not key.endswith(b"_data"):
                        continue
                    i = int(key[7:-5])
                    if not 0 <= i < count or len(value) != 8:
                        raise ValueError(f"{self.path}: {key.decode()} is not an int64 label of one of "
                                         f"{count:,} images; {remedy}")
                    labels[i], seen[i] = np.frombuffer(value, dtype=np.int64)[0], True
        if not seen.all():
            raise ValueError(f"{self.path} holds {int(seen.sum()):,} labels for {count:,} images "
                             f"(none for image {int(np.argmin(seen))}); {remedy}")
        if labels.min() < 0:
            raise ValueError(f"{self.path} holds a negative label ({labels.min()}); {remedy}")
        return labels

    def __len__(self) -> int:
        return self.shape[0]

    def image(self, index: int) -> np.ndarray:
        """The uint8 CHW image ``index`` as stored (read-only)."""
        return read_row(self.env(), "images", self._check_index(index), np.uint8, self.shape[1:])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.image(index).copy()).float() / 127.5 - 1.0
        return x, self.targets[index]


class LMDBLatentsPrompts(_LMDBDataset):
    """DMD2's Stable Diffusion LMDB: ``(latents, prompt)`` from float16 ``latents`` and UTF-8 ``prompts``.

    The latents come as float32 (exact), as DMD2's ``SDImageDatasetLMDB`` returns them; they are the
    VAE's latents already multiplied by its scaling factor. ``latent_shape`` is the shape of one row.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        remedy = "write it again (imagedata.lmdb.LMDBWriter) or unzip DMD2's latents LMDB again"
        env = self.env()
        shape = _require_shape(env, "latents", "DMD2 latents", remedy)
        self.count, self.latent_shape = shape[0], shape[1:]
        prompts_shape = read_shape(env, "prompts")
        if prompts_shape is not None and prompts_shape != (self.count,):
            raise ValueError(f"{self.path}: prompts_shape {prompts_shape} does not match the {self.count:,} "
                             f"latents; {remedy}")
        _check_rows(env, "latents", self.count, np.float16, self.latent_shape, remedy)
        try:
            for i in {0, self.count - 1}:
                read_text(env, "prompts", i)
        except ValueError as error:
            raise ValueError(f"{error}; {remedy}") from None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        env, index = self.env(), self._check_index(index)
        latents = read_row(env, "latents", index, np.float16, self.latent_shape)
        return torch.from_numpy(latents.astype(np.float32)), read_text(env, "prompts", index)

    def model_input(self, batch, codec, flip: bool = True):
        """``(None, latents, prompts)``, as stored (DMD2 flips nothing)."""
        latents, prompts = batch
        return None, latents, prompts


class LMDBODEPairs(_LMDBDataset):
    """DMD2's noise-image pairs (``preprocessing/generate_noise_image_pairs.py``, DMD2's ``SDXLODEDatasetLMDB``):
    ``(noise, latents, condition)`` in float32 from float16 ``latents`` (the noise; a row may hold a trajectory,
    (steps, C, h, w)), ``images`` (the teacher's final latents), ``prompt_embeds_list`` and, for SDXL,
    ``pooled_prompt_embeds`` (the condition is then both, packed as ``models.stable_diffusion.pack``). The first
    ``num_pairs`` rows when given (DMD2's ``--num_ode_pairs``)."""

    KEYS = ("latents", "images", "prompt_embeds_list")

    def __init__(self, path: str | Path, num_pairs: int = 0):
        super().__init__(path)
        remedy = "write it again with preprocessing/create_lmdb_iterative.py"
        env = self.env()
        self.shapes = {k: _require_shape(env, k, "DMD2 noise-image pairs", remedy) for k in self.KEYS}
        pooled = read_shape(env, "pooled_prompt_embeds")
        if pooled is not None:
            self.shapes["pooled_prompt_embeds"] = pooled
        counts = {k: shape[0] for k, shape in self.shapes.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"{self.path}: its arrays hold different numbers of rows {counts}; {remedy}")
        self.count = counts["latents"] if num_pairs <= 0 else min(num_pairs, counts["latents"])
        for name, shape in self.shapes.items():
            _check_rows(env, name, counts[name], np.float16, shape[1:], remedy)

    @property
    def xl(self) -> bool:
        return "pooled_prompt_embeds" in self.shapes

    def __len__(self) -> int:
        return self.count

    def _row(self, name: str, index: int) -> torch.Tensor:
        row = read_row(self.env(), name, index, np.float16, self.shapes[name][1:])
        return torch.from_numpy(row.astype(np.float32))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
        condition = self._row("prompt_embeds_list", index)
        if self.xl:
            condition = torch.cat([condition.flatten(), self._row("pooled_prompt_embeds", index)])
        return self._row("latents", index), self._row("images", index), condition
