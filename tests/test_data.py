"""The built-in procedural dataset and the ImageNet-style folder dataset (ADM center crop)."""

import numpy as np
import pytest
import torch
from PIL import Image

import imagedata.procedural as procedural
from imagedata.folder import ImageFolderDataset, center_crop_arr, validate_image_folder
from imagedata.procedural import CLASS_NAMES, ProceduralImages, render, render_batch

# --- the built-in dataset ------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    first = render_batch(np.arange(60), seed=3, resolution=32)
    assert first.tobytes() == render_batch(np.arange(60), seed=3, resolution=32).tobytes()
    assert (first != render_batch(np.arange(60), seed=4, resolution=32)).any(axis=(1, 2, 3)).all()
    # an image does not depend on the batch it is rendered in
    assert np.array_equal(render(37, seed=3, resolution=32), first[37])
    assert np.array_equal(render_batch([59, 2, 37], seed=3, resolution=32), first[[59, 2, 37]])


def test_every_prefix_is_class_balanced():
    ds = ProceduralImages(100, resolution=16, num_classes=10)
    assert np.bincount(ds.targets).tolist() == [10] * 10
    assert [ds[i][1] for i in range(12)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    small = ProceduralImages(40, resolution=16, num_classes=4)
    assert small.classes == list(CLASS_NAMES[:4])
    assert np.bincount(small.targets).tolist() == [10] * 4


@pytest.mark.parametrize("resolution", [16, 32, 64, 256])
def test_shape_range_and_contrast_at_any_resolution(resolution):
    images = render_batch(np.arange(10), seed=0, resolution=resolution)
    assert images.shape == (10, resolution, resolution, 3) and images.dtype == np.uint8
    # foreground and background both show, every channel differing by >= 0.35 of the range
    spread = images.reshape(10, -1, 3).max(1).astype(int) - images.reshape(10, -1, 3).min(1)
    assert spread.min() >= 0.35 * 255 - 2
    x, label = ProceduralImages(10, resolution=resolution)[3]
    assert x.shape == (3, resolution, resolution) and x.dtype == torch.float32 and label == 3
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, torch.from_numpy(images[3]).permute(2, 0, 1).float() / 127.5 - 1)


def test_same_picture_at_every_resolution():
    # geometry is in image units: 2x2 block means of the 64 px image are the 32 px image, up to edges
    small = render_batch(np.arange(20), seed=0, resolution=32).astype(float)
    large = render_batch(np.arange(20), seed=0, resolution=64).astype(float)
    pooled = large.reshape(20, 32, 2, 32, 2, 3).mean((2, 4))
    assert np.abs(pooled - small).mean() < 4.0  # of 255
    assert np.abs(pooled - render_batch(np.arange(20), seed=1, resolution=32)).mean() > 40.0


def _amplitude_spectra(images: np.ndarray) -> np.ndarray:
    grey = images.astype(np.float64).mean(-1)
    grey = (grey - grey.mean((1, 2), keepdims=True)) / grey.std((1, 2), keepdims=True)
    return np.abs(np.fft.fft2(grey)).reshape(len(images), -1)


def test_classes_are_distinct():
    # Per-class mean amplitude spectra (translation and colour invariant) separate held-out images
    # of another seed by nearest class mean: no learning involved.
    labels = np.arange(400) % 10
    train = _amplitude_spectra(render_batch(np.arange(400), seed=0, resolution=32))
    means = np.stack([train[labels == c].mean(0) for c in range(10)])
    test = _amplitude_spectra(render_batch(np.arange(400), seed=1, resolution=32))
    predicted = np.linalg.norm(test[:, None] - means[None], axis=-1).argmin(1)
    assert (predicted == labels).mean() > 0.9


def test_rendering_is_fast():
    import time

    start = time.perf_counter()
    render_batch(np.arange(2000), seed=0, resolution=32)
    assert time.perf_counter() - start < 5.0  # about 0.1 s on a 2-core CPU


def test_cached_and_uncached_items_agree(monkeypatch):
    cached = ProceduralImages(30, resolution=16, seed=5)
    monkeypatch.setattr(procedural, "_CACHE_BYTES", 0)
    uncached = ProceduralImages(30, resolution=16, seed=5)
    assert uncached._chunks is None
    for i in (0, 17, 29):
        assert torch.equal(cached[i][0], uncached[i][0])


def test_flip_mirrors_about_half_the_items():
    ds = ProceduralImages(10, resolution=16, flip=True)
    plain = ProceduralImages(10, resolution=16)[7][0]
    torch.manual_seed(0)
    seen = [ds[7][0] for _ in range(40)]
    mirrored = sum(torch.equal(x, plain.flip(-1)) for x in seen)
    assert sum(torch.equal(x, plain) for x in seen) + mirrored == 40 and 8 <= mirrored <= 32


@pytest.mark.parametrize("bad", [0, 11])
def test_impossible_class_count_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="--num-classes") as error:
        ProceduralImages(10, num_classes=bad)
    assert "1 to 10" in str(error.value) and "\n" not in str(error.value)


# --- ADM center crop -----------------------------------------------------------------------------


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (10, 7), (64, 64), (1000, 129)])
def test_center_crop_output_size(size):
    assert center_crop_arr(_noise_image(*size), 64).size == (64, 64)


def test_center_crop_halves_with_box_filter():
    # 256 -> 128 -> 64 by BOX halving (short side >= 2 * 64 twice), then a no-op bicubic resize:
    # the output is the 4x4 block mean of the input, up to PIL's uint8 rounding (<= 1 per stage).
    source = _noise_image(256, 256)
    block_mean = np.asarray(source).astype(float).reshape(64, 4, 64, 4, 3).mean((1, 3))
    out = np.asarray(center_crop_arr(source, 64)).astype(float)
    assert np.abs(out - block_mean).max() <= 2.0
    # one bicubic resize straight to 64 would be far from the block means on noise
    direct = np.asarray(source.resize((64, 64), Image.BICUBIC)).astype(float)
    assert np.abs(direct - block_mean).mean() > 4.0
    # 127 px is below 2 * 64: no halving, one bicubic resize to 64
    small = _noise_image(127, 127)
    expected = np.asarray(small.resize((64, 64), Image.BICUBIC))
    assert np.array_equal(np.asarray(center_crop_arr(small, 64)), expected)


def test_center_crop_keeps_the_middle():
    # 300 x 100 in three coloured thirds, crop 100: no resize (scale 1), the middle third remains
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, :100, 0], array[:, 100:200, 1], array[:, 200:, 2] = 255, 255, 255
    out = np.asarray(center_crop_arr(Image.fromarray(array), 100))
    assert (out == [0, 255, 0]).all()


# --- the image folder ----------------------------------------------------------------------------


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    red = np.zeros((20, 30, 3)) + [255, 0, 0]
    left_right = np.zeros((16, 16, 3))
    left_right[:, :8] = [255, 255, 255]
    _write(tmp_path / "cat" / "a.png", red)
    _write(tmp_path / "dog" / "b.PNG", left_right)  # extensions are case-insensitive
    _write(tmp_path / "dog" / "nested" / "c.jpg", left_right)  # searched recursively
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes
    return tmp_path


def test_folder_dataset_reads_classes_in_sorted_order(folder):
    ds = ImageFolderDataset(folder, image_size=16, flip=False)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3 and ds.targets == [0, 1, 1]
    x, label = ds[0]
    assert label == 0 and x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 16, 16))
    assert validate_image_folder(folder) == ["cat", "dog"]


def test_folder_flip(folder):
    ds = ImageFolderDataset(folder, image_size=16, flip=True)
    torch.manual_seed(0)
    left_bright = [ds[1][0][:, :, 0].mean() > 0 for _ in range(30)]
    assert 5 <= sum(left_bright) <= 25


def _error(call, *args) -> str:
    with pytest.raises(ValueError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("check", [validate_image_folder, lambda root: ImageFolderDataset(root, 16)])
def test_folder_errors_say_what_to_do(tmp_path, check):
    assert "does not exist" in _error(check, tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"")
    assert "not a folder" in _error(check, tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in _error(check, tmp_path / "empty")
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "readme.txt").write_text("x")
    assert "no images" in _error(check, tmp_path / "no_images")
    _write(tmp_path / "one_empty" / "cat" / "a.png", np.zeros((4, 4, 3)))
    (tmp_path / "one_empty" / "dog").mkdir()
    assert "dog" in _error(check, tmp_path / "one_empty")


def test_corrupt_image_error_names_the_file(tmp_path):
    _write(tmp_path / "cat" / "good.png", np.zeros((8, 8, 3)))
    (tmp_path / "cat" / "junk.jpg").write_bytes(b"this is not a jpeg")
    _write(tmp_path / "dog" / "whole.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
    truncated = tmp_path / "dog" / "truncated.png"
    truncated.write_bytes((tmp_path / "dog" / "whole.png").read_bytes()[:200])
    ds = ImageFolderDataset(tmp_path, image_size=8)
    paths = [path for path, _ in ds.samples]
    for bad in ("junk.jpg", "truncated.png"):
        message = _error(ds.__getitem__, next(i for i, p in enumerate(paths) if p.endswith(bad)))
        assert bad in message and str(tmp_path) in message
