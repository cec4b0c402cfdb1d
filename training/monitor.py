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


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """Save [-1, 1] images as one PNG grid with a 2-pixel border."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    pad = 2
    grid = np.zeros((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    if c == 1:
        grid = grid[..., 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


class MetricsLog:
    """Appends one JSON line per logging step to ``metrics.jsonl`` and redraws ``loss.png``.

    On resume the file is truncated to the steps before the checkpoint, so the
    curve never shows a step twice.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.plot_path = Path(run_dir) / "loss.png"
        self.records: list[dict] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if resume_step is None or rec["step"] <= resume_step:
                        self.records.append(rec)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

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
