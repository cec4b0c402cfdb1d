"""The overfit report: does a model trained on a few images per class reproduce them?

After ``train.py --overfit --samples N`` the EMA model draws one sample for every training
image, conditioned on that image's class. A model that has memorised its data returns one of
its class's training images, so the report measures, per sample, the mean absolute pixel error
(0-255) to the nearest training image of the same class, and on the built-in dataset the proxy
classifier's class accuracy. It writes ``overfit_report.json`` and ``overfit_samples.png``: one
row per class, its samples followed by their nearest training images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common.monitor import save_grid, to_uint8
from training.visual import eval_sampler, sample_chunks, side_stream


def nearest_pixel_error(samples: np.ndarray, sample_labels: np.ndarray, images: np.ndarray,
                        labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the mean absolute error (uint8 scale) to the closest image of its class, and that image's index."""
    errors, nearest = np.empty(len(samples)), np.empty(len(samples), dtype=np.int64)
    for i, (x, y) in enumerate(zip(samples.astype(np.float64), sample_labels)):
        (same,) = np.nonzero(labels == y)
        dist = np.abs(images[same].astype(np.float64) - x).mean(axis=(1, 2, 3))
        errors[i], nearest[i] = dist.min(), same[dist.argmin()]
    return errors, nearest


def comparison_rows(samples: torch.Tensor, nearest: torch.Tensor, labels: np.ndarray, names=None):
    """``(images, row length, row names)`` for ``save_grid``: one row per class, its samples then their
    nearest training images; with unequal class counts, all samples above all training images, unnamed."""
    classes = sorted(set(labels.tolist()))
    rows = [np.nonzero(labels == c)[0] for c in classes]
    if len({len(r) for r in rows}) != 1:
        return torch.cat([samples, nearest]), min(len(samples), 10), None
    order = torch.as_tensor(np.concatenate(rows))
    per_class = len(rows[0])
    grid = torch.stack([samples[order].view(len(classes), per_class, *samples.shape[1:]),
                        nearest[order].view(len(classes), per_class, *samples.shape[1:])], 1).flatten(0, 2)
    return grid, 2 * per_class, [names[c] for c in classes] if names else None


@torch.no_grad()
def overfit_report(ema, codec, subset, num_classes: int, run_dir: Path, step: int, cfg_scale: float = 1.0,
                   sampling_steps: int = 250, builtin: bool = False, names=None, **sampling) -> dict:
    """Sample once per training image of ``subset`` (an ``overfit_subset``) and compare; see the module doc."""
    device = next(ema.parameters()).device
    images = torch.stack([subset[i][0] for i in range(len(subset))])
    labels = torch.as_tensor(subset.labels)
    with side_stream(device, 2):
        noise = torch.randn_like(codec.encode(images.to(device)))
        (samples,) = sample_chunks(ema, codec, noise, labels.to(device), len(noise), sampler=eval_sampler(ema),
                                   num_steps=sampling_steps, cfg_scale=cfg_scale, num_classes=num_classes, **sampling)
    fake, real = to_uint8(samples), to_uint8(images)
    errors, nearest = nearest_pixel_error(fake, labels.numpy(), real, labels.numpy())
    report = {"step": step, "mean_pixel_error": float(errors.mean()), "max_pixel_error": float(errors.max()),
              "images": len(subset), "sampler": f"{eval_sampler(ema)}{sampling_steps}", "cfg_scale": cfg_scale}
    if builtin:
        from evaluations.proxy import accuracy, get_proxy_classifier

        classifier = get_proxy_classifier(num_classes, device=device)
        report["class_accuracy"] = accuracy(classifier, samples.clamp(-1, 1), labels.numpy())
    run_dir = Path(run_dir)
    (run_dir / "overfit_report.json").write_text(json.dumps(report, indent=2) + "\n")
    grid, nrow, rows = comparison_rows(samples.cpu().float(), images[torch.as_tensor(nearest)], labels.numpy(), names)
    save_grid(grid, run_dir / "overfit_samples.png", nrow=nrow, row_labels=rows)
    return report
