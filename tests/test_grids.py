"""Sample grids a person can read: small images enlarged (nearest neighbour), one named row per class."""

import numpy as np
import pytest
import torch
from PIL import Image

from common.monitor import row_labels, save_grid
from imagedata import class_names
from training.overfit import comparison_rows


def test_small_images_are_enlarged_to_512_pixels_and_rows_are_named(tmp_path):
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    save_grid(images, tmp_path / "g.png", nrow=3, row_labels=["disc", "horizontal stripes"])
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    height, width = grid.shape[:2]
    scale = ((height - 2) // 2 - 2) // 16  # two rows of 16 px images enlarged by an integer factor
    assert height == 2 + 2 * (16 * scale + 2) and scale > 1
    label_width = width - 3 * (16 * scale + 2) - 2
    assert label_width > 0 and width >= 512 > width - 3 * 16  # the least factor that reaches 512 px
    for row in range(2):  # text in the label column beside each row
        top = 2 + row * (16 * scale + 2)
        assert grid[top:top + 16 * scale, :label_width].max() > 128
    cell = grid[2:2 + 16 * scale, label_width + 2:label_width + 2 + 16 * scale].reshape(16, scale, 16, scale, 3)
    assert (cell == cell[:, :1, :, :1]).all()  # each source pixel a square of scale x scale
    with pytest.raises(ValueError, match="3 row labels for a grid of 2 rows"):
        save_grid(images, tmp_path / "h.png", nrow=3, row_labels=["a", "b", "c"])


def test_large_images_are_kept_at_their_size(tmp_path):
    save_grid(torch.zeros(2, 3, 300, 300), tmp_path / "g.png", nrow=2)
    assert Image.open(tmp_path / "g.png").size == (2 * 302 + 2, 304)


def test_rows_are_named_only_when_each_shows_one_class():
    names = class_names("builtin", 10)
    assert names[5] == "horizontal stripes" and class_names("folder", 3) == ["0", "1", "2"]
    assert row_labels([0, 0, 3, 3], 2, names) == ["disc", "ring"]
    assert row_labels([0, 1, 3, 3], 2, names) is None


def test_overfit_grid_puts_each_class_beside_its_training_images():
    samples, nearest = torch.arange(4.0).view(4, 1, 1, 1), 10 + torch.arange(4.0).view(4, 1, 1, 1)
    labels = np.array([0, 1, 0, 1])  # overfit_subset's order: classes interleaved
    grid, nrow, rows = comparison_rows(samples, nearest, labels, ["disc", "square"])
    assert nrow == 4 and rows == ["disc", "square"]
    assert grid.flatten().tolist() == [0, 2, 10, 12, 1, 3, 11, 13]
