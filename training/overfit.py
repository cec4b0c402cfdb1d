"""The overfit report: does a model trained on a few images per class reproduce them?

After ``train.py --overfit --samples N`` the EMA model draws one sample for every training
image, conditioned on that image's class. A model that has memorised its data returns one of
its class's training images, so the report measures, per sample, the mean absolute pixel error
(0-255) to the nearest training image of the same class, and on the built-in dataset the proxy
classifier's class accuracy. It writes ``overfit_report.json`` and ``overfit_samples.png``
(samples in the first half, their nearest training images in the second).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffusion.pipeline import generate
from training.monitor import save_grid, to_uint8
from training.visual import eval_sampler


def nearest_pixel_error(samples: np.ndarray, sample_labels: np.ndarray, images: np.ndarray,
                        labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the mean absolute error (uint8 scale) to the closest image of its class, and that image's index."""
    errors, nearest = np.empty(len(samples)), np.empty(len(samples), dtype=np.int64)
    for i, (x, y) in enumerate(zip(samples.astype(np.float64), sample_labels)):
        (same,) = np.nonzero(labels == y)
        dist = np.abs(images[same].astype(np.float64) - x).mean(axis=(1, 2, 3))
        errors[i], nearest[i] = dist.min(), same[dist.argmin()]
    return errors, nearest


@torch.no_grad()
def overfit_report(ema, codec, subset, num_classes: int, run_dir: Path, step: int, cfg_scale: float = 1.0,
                   sampling_steps: int = 250, builtin: bool = False, **sampling) -> dict:
    """Sample once per training image of ``subset`` (an ``overfit_subset``) and compare; see the module doc."""
    device = next(ema.parameters()).device
    images = torch.stack([subset[i][0] for i in range(len(subset))])
    labels = torch.as_tensor(subset.labels)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(2)
        latents = codec.encode(images.to(device))
        noise = torch.randn_like(latents)
        z = generate(ema, noise, labels.to(device), sampler=eval_sampler(ema), num_steps=sampling_steps,
                     cfg_scale=cfg_scale, cls_cfg_scale=cfg_scale, num_classes=num_classes,
                     clip_denoised=codec.bounded, **sampling)
        samples = codec.decode(z)
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
    save_grid(torch.cat([samples.cpu().float(), images[torch.as_tensor(nearest)]]), run_dir / "overfit_samples.png",
              nrow=min(len(subset), 10))
    return report
