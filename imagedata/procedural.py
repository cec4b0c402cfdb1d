"""The built-in dataset: procedural class-conditional images made in code.

No file and no download: image ``i`` of a set is a pure function of ``(seed, i,
resolution, num_classes)``, so the same seed always gives the same bytes, at any
resolution and any size. The class of image ``i`` is ``i % num_classes``, so every
prefix of a set is balanced.

Each image is one flat background colour with one foreground pattern (a shape or a
texture) drawn with an anti-aliased edge: every pattern is a signed distance ``sd``
in image units (side = 1), and pixel coverage is ``clip(0.5 - sd * resolution, 0, 1)``,
a one-pixel linear ramp. Positions, sizes, stripe period and phase and both colours
are random per image; every RGB channel of the foreground differs from the background
by at least 0.35 (of 1), so the contrast stays high. Geometry is in image units, so
the same index rendered at 32 and at 256 pixels shows the same picture.

Per-image random numbers come from a counter-based hash (splitmix64) of
``(seed, index, slot)``, vectorised in numpy and independent of numpy's generator
streams; batches of one class are rendered together as ``(n, H, W)`` arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .inputs import Images

CLASS_NAMES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
)

_NUM_UNIFORMS = 16  # random numbers drawn per image (slots of the hash)
_CHUNK_PIXELS = 1 << 20  # pixels per rendering chunk, bounds temporary memory
_CACHE_BYTES = 512 << 20  # ProceduralImages keeps rendered images when the whole set fits in this
_DATASET_CHUNK = 1024  # images ProceduralImages renders at once


def check_num_classes(num_classes: int) -> int:
    """Validate a class count for the built-in dataset (the first ``num_classes`` of ``CLASS_NAMES``)."""
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(
            f"the built-in procedural dataset has {len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)}); "
            f"--num-classes {num_classes} is not possible: use a value from 1 to {len(CLASS_NAMES)}, "
            "or an image folder for more classes"
        )
    return num_classes


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al., 2014) on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(indices: np.ndarray, seed: int) -> np.ndarray:
    """``(n, _NUM_UNIFORMS)`` float64 in [0, 1), a deterministic function of ``(seed, index, slot)``."""
    seed_key = _splitmix64(np.array([seed % (1 << 64)], dtype=np.uint64))
    counters = indices.astype(np.uint64)[:, None] * np.uint64(_NUM_UNIFORMS)
    counters = counters + np.arange(_NUM_UNIFORMS, dtype=np.uint64)
    bits = _splitmix64(_splitmix64(counters ^ seed_key))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _lerp(u: np.ndarray, low: float, high: float) -> np.ndarray:
    return (low + (high - low) * u).astype(np.float32)


def _centre(u: np.ndarray, extent: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Offsets from a random centre that keeps a pattern of half-extent ``extent`` inside the image."""
    margin = extent + 0.04
    cx = margin + (1 - 2 * margin) * _lerp(u[:, 0], 0, 1)[:, None, None]
    cy = margin + (1 - 2 * margin) * _lerp(u[:, 1], 0, 1)[:, None, None]
    return x - cx, y - cy


def _box(dx: np.ndarray, dy: np.ndarray, hx, hy) -> np.ndarray:
    return np.maximum(np.abs(dx) - hx, np.abs(dy) - hy)


def _cell(t: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Offset from the centre of the periodic cell containing ``t``, in [-period / 2, period / 2)."""
    g = t / period + phase
    return period * (g - np.floor(g) - 0.5)


def _stripes(t: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Signed distance to bands of width ``period / 2`` along the coordinate ``t``."""
    return np.abs(_cell(t, period, phase)) - period / 4


def _signed_distance(name: str, u: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of pattern ``name`` for images with random numbers ``u``."""

    def col(k: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        return _lerp(u[:, k], low, high)[:, None, None]

    size, extra = col(2), col(12)
    if name == "disc":
        r = 0.18 + 0.14 * size
        dx, dy = _centre(u, r, x, y)
        return np.hypot(dx, dy) - r
    if name == "square":
        h = 0.15 + 0.13 * size
        dx, dy = _centre(u, h, x, y)
        return _box(dx, dy, h, h)
    if name == "triangle":  # equilateral, apex up; circumradius R, inradius R / 2
        big_r = 0.22 + 0.14 * size
        dx, dy = _centre(u, big_r, x, y)
        side = np.maximum(0.8660254 * dx - 0.5 * dy, -0.8660254 * dx - 0.5 * dy)
        return np.maximum(dy, side) - big_r / 2
    if name == "ring":
        r, width = 0.2 + 0.14 * size, 0.25 + 0.15 * extra
        dx, dy = _centre(u, r, x, y)
        return np.abs(np.hypot(dx, dy) - r * (1 - width / 2)) - r * width / 2
    if name == "cross":
        arm = 0.18 + 0.14 * size
        half_width = arm * (0.25 + 0.1 * extra)
        dx, dy = _centre(u, arm, x, y)
        return np.minimum(_box(dx, dy, arm, half_width), _box(dx, dy, half_width, arm))
    period, phase_x, phase_y = col(9, 0.2, 0.36), col(10), col(11)
    if name == "horizontal_stripes":
        return _stripes(y, period, phase_y)
    if name == "vertical_stripes":
        return _stripes(x, period, phase_x)
    if name == "diagonal_stripes":
        return _stripes((x + y) * 0.70710678, period, phase_x)
    if name == "dots":
        dot_period = col(9, 0.22, 0.34)
        lx, ly = _cell(x, dot_period, phase_x), _cell(y, dot_period, phase_y)
        return np.hypot(lx, ly) - dot_period * (0.22 + 0.1 * extra)
    if name == "checkerboard":  # inside where exactly one of two orthogonal stripe sets is
        sx, sy = _stripes(x, period, phase_x), _stripes(y, period, phase_y)
        edge = np.minimum(np.abs(sx), np.abs(sy))
        return np.where(sx * sy < 0, -edge, edge)
    raise KeyError(name)


def _coverage(name: str, u: np.ndarray, resolution: int) -> np.ndarray:
    """Anti-aliased foreground coverage in [0, 1], shape ``(n, resolution, resolution)``."""
    grid = ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution)[None]
    x, y = grid[:, None, :], grid[:, :, None]
    return np.clip(0.5 - _signed_distance(name, u, x, y) * resolution, 0.0, 1.0)


def _colours(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground uniform in RGB; background per channel ``fg + 0.5 + delta (mod 1)``, ``|delta| <= 0.15``."""
    fg = u[:, 3:6].astype(np.float32)
    bg = fg + 0.5 + 0.3 * (u[:, 6:9].astype(np.float32) - 0.5)
    return fg, bg - np.floor(bg)


def render_batch(indices, seed: int = 0, resolution: int = 32, num_classes: int = 10) -> np.ndarray:
    """Images ``indices`` of the set ``(seed, num_classes)`` as uint8 ``(n, resolution, resolution, 3)``."""
    check_num_classes(num_classes)
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and indices.min() < 0:
        raise ValueError("image indices must be non-negative")
    out = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (resolution * resolution))
    labels = indices % num_classes
    for label in np.unique(labels):
        (where,) = np.nonzero(labels == label)
        for start in range(0, len(where), chunk):
            sel = where[start : start + chunk]
            u = _uniforms(indices[sel], seed)
            alpha = _coverage(CLASS_NAMES[label], u, resolution)[..., None]
            fg, bg = _colours(u)
            image = bg[:, None, None] + (fg - bg)[:, None, None] * alpha
            out[sel] = np.rint(image * 255.0).astype(np.uint8)
    return out


def render(index: int, seed: int = 0, resolution: int = 32, num_classes: int = 10) -> np.ndarray:
    """Image ``index`` of the set ``(seed, num_classes)``: uint8 ``(resolution, resolution, 3)``."""
    return render_batch([index], seed, resolution, num_classes)[0]


def label_of(index: int, num_classes: int = 10) -> int:
    """The class of image ``index``: ``index % num_classes`` (any prefix is balanced)."""
    return int(index) % num_classes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (or HWC) → float NCHW (or CHW) in [-1, 1], as ``Normalize(0.5, 0.5)`` after ``ToTensor``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0
    return x.movedim(-1, -3)


class ProceduralImages(Images, Dataset):
    """``num_images`` procedural images as ``(float CHW in [-1, 1], int label)``.

    Images are rendered on demand, 1,024 at a time (about 40 ms at 32 px), and kept
    when the whole set fits in 512 MiB of uint8 pixels; larger sets are rendered item
    by item. Both give identical images. ``flip`` mirrors an item horizontally with
    probability 1/2 using torch's global generator, as ``RandomHorizontalFlip`` does.
    """

    def __init__(self, num_images: int, resolution: int = 32, num_classes: int = 10, seed: int = 0,
                 flip: bool = False):  # fmt: skip
        check_num_classes(num_classes)
        if num_images < 1 or resolution < 1:
            raise ValueError(f"need at least one image of at least one pixel, got {num_images} x {resolution} px")
        self.num_images, self.resolution, self.num_classes = int(num_images), int(resolution), int(num_classes)
        self.seed, self.flip = int(seed), bool(flip)
        self.classes = list(CLASS_NAMES[:num_classes])
        self.targets = [label_of(i, num_classes) for i in range(self.num_images)]
        self._chunks = {} if self.num_images * self.resolution**2 * 3 <= _CACHE_BYTES else None

    def __len__(self) -> int:
        return self.num_images

    def image(self, index: int) -> np.ndarray:
        """The uint8 HWC image ``index`` (never flipped)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        if self._chunks is None:
            return render(index, self.seed, self.resolution, self.num_classes)
        chunk, offset = divmod(int(index), _DATASET_CHUNK)
        if chunk not in self._chunks:
            indices = np.arange(chunk * _DATASET_CHUNK, min((chunk + 1) * _DATASET_CHUNK, self.num_images))
            self._chunks[chunk] = render_batch(indices, self.seed, self.resolution, self.num_classes)
        return self._chunks[chunk][offset]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = to_tensor(self.image(index))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.targets[index]
