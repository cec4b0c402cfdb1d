"""What a person watches during training: a metrics log, loss plots and sample grids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC, as official ``sample_ddp.py`` does
    (``clamp(127.5 x + 128, 0, 255)`` then truncation)."""
    x = torch.clamp(127.5 * images.float() + 128.0, 0, 255)
    return x.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


GRID_MIN_WIDTH = 512  # pixels: a grid of small images is enlarged until it is at least this wide
GRID_PAD = 2
LABEL_FONT_SIZE = 14


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, row_labels: list[str] | None = None,
              min_width: int = GRID_MIN_WIDTH) -> None:
    """Save [-1, 1] images as one PNG grid with 2-pixel borders, written atomically.

    Small images are enlarged by the smallest integer factor (nearest neighbour, so pixels stay
    sharp squares) that makes the grid at least ``min_width`` pixels wide; ``row_labels`` (one per
    row, e.g. the class each row shows) are written in a column to the left of the rows.
    """
    from PIL import ImageDraw, ImageFont

    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    font = ImageFont.load_default(size=LABEL_FONT_SIZE) if row_labels else None
    label_w = 0
    if row_labels:
        if len(row_labels) != nrows:
            raise ValueError(f"{len(row_labels)} row labels for a grid of {nrows} rows")
        label_w = max(int(font.getlength(text)) for text in row_labels) + 2 * GRID_PAD
    scale = max(1, -(-(min_width - label_w - GRID_PAD * (ncol + 1)) // (ncol * w)))
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.zeros((nrows * (h + GRID_PAD) + GRID_PAD, label_w + ncol * (w + GRID_PAD) + GRID_PAD, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = GRID_PAD + r * (h + GRID_PAD), label_w + GRID_PAD + col * (w + GRID_PAD)
        grid[top:top + h, left:left + w] = arr[i]
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if row_labels:
        draw = ImageDraw.Draw(image)
        for r, text in enumerate(row_labels):
            box = draw.textbbox((0, 0), text, font=font)
            top = GRID_PAD + r * (h + GRID_PAD) + (h - (box[3] - box[1])) // 2 - box[1]
            draw.text((GRID_PAD, top), text, fill=255 if c == 1 else (255, 255, 255), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


def row_labels(labels, nrow: int, names) -> list[str] | None:
    """The name of the class each row of a grid shows (``labels`` in grid order), or None when a row mixes
    classes."""
    labels = [int(y) for y in labels]
    rows = [labels[i:i + nrow] for i in range(0, len(labels), nrow)]
    if not all(len(set(row)) == 1 for row in rows):
        return None
    return [names[row[0]] for row in rows]


class MetricsLog:
    """Appends one JSON line per logging step to ``metrics.jsonl`` and redraws ``loss.png``.

    A resumed run starts from the records already there (``training.run.keep_records_until``
    has cut them at the checkpoint's step, so the curve never shows a step twice).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.plot_path = Path(run_dir) / "loss.png"
        self.records: list[dict] = []
        if self.path.exists():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        """Every numeric key but step/lr/throughput as a curve against step (log-y); lr beside it."""
        if not self.records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        skip = {"step", "lr", "steps_per_sec", "images_per_sec", "mfu", "epoch"}
        keys = [k for k in self.records[-1] if k not in skip and isinstance(self.records[-1][k], (int, float))]
        has_lr = "lr" in self.records[-1]
        fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(11 if has_lr else 6, 4), squeeze=False)
        ax = axes[0, 0]
        for k in keys:
            ax.plot(steps, [r.get(k, float("nan")) for r in self.records], label=k)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title("training loss")
        ax.legend()
        ax.grid(alpha=0.3)
        if has_lr:
            axes[0, 1].plot(steps, [r.get("lr") for r in self.records])
            axes[0, 1].set_xlabel("step")
            axes[0, 1].set_title("learning rate")
            axes[0, 1].grid(alpha=0.3)
        fig.tight_layout()
        tmp = self.plot_path.with_name("loss.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.plot_path)
