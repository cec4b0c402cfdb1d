"""Sample grids during training and the built-in dataset's proxy evaluation, for any model family."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from common.monitor import row_labels, save_grid, to_uint8
from diffusion.network import contract
from diffusion.pipeline import default_sampler, generate

GRID_STEPS = 50        # a quick, comparable view across checkpoints
GRID_CFG_SCALE = 4.0   # official DiT sample.py default; REPA samples with 4.0 during training too


def grid_sampler(model) -> str:
    """Deterministic where the family allows: DDIM for DiT, the Euler ODE for SiT / REPA (as REPA's
    in-training samples), the SDE for REG (REG's own sampler); a distilled generator its own steps."""
    return family_sampler(model, flow="ode", ddpm="ddim")


def eval_sampler(model) -> str:
    """The samplers the papers report FID with: DDPM for DiT, Euler-Maruyama for SiT / REPA / REG (a distilled
    generator: its own steps)."""
    return family_sampler(model)


def family_sampler(model, **choices) -> str:
    """``diffusion.pipeline.default_sampler`` of what ``model`` declares."""
    net = contract(model)
    prediction = "velocity" if net.sit_only else net.prediction  # SiT's score / noise targets: its ODE or SDE
    return default_sampler(prediction, class_token=bool(net.cls_token_dim), generator=bool(net.generator_sigmas),
                           **choices)


def grid_labels(num_classes: int, size: int = 16) -> tuple[torch.Tensor, int]:
    """Labels of the periodic sample grid and its row length: with up to ``size`` classes, one row
    per class (``size // num_classes`` samples each, at least 4); with more, ``size`` classes spread
    over the label range, 8 to a row."""
    if num_classes > size:
        return torch.arange(size) * (num_classes // size) % num_classes, 8
    per_class = max(4, size // num_classes)
    return torch.arange(num_classes).repeat_interleave(per_class), per_class


@torch.no_grad()
def diffusion_grid_images(network, codec, noise, labels, num_classes: int, cfg_scale: float | None = None,
                          **sampling) -> torch.Tensor:
    """Images in [-1, 1] of a diffusion model (or a distilled generator) for the sample grid: ``GRID_STEPS``
    of its family's default sampler, guided at ``cfg_scale`` (default ``GRID_CFG_SCALE``) when it has a null
    class; ``sampling``: extra ``diffusion.pipeline.generate`` arguments (noise schedule, path type)."""
    # --cfg-prob 0: no null class to guide with; a distilled generator has the guidance built in
    net = contract(network)
    scale = GRID_CFG_SCALE if cfg_scale is None else cfg_scale
    scale = scale if net.null_class is not None and not net.generator_sigmas else 1.0
    (images,) = sample_chunks(network, codec, noise, labels, len(noise), sampler=grid_sampler(network),
                              num_steps=GRID_STEPS, cfg_scale=scale, num_classes=num_classes, **sampling)
    return images


@contextmanager
def side_stream(device, seed: int):
    """A forked RNG seeded with ``seed``: what runs inside leaves the training stream (and exact resume) as it was."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def sample_chunks(network, codec, noise, labels, chunk: int, cfg_scale: float = 1.0, **generate_kwargs):
    """Decoded images in [-1, 1] of ``network`` for ``noise`` and ``labels``, ``chunk`` at a time
    (``diffusion.pipeline.generate``; REG's class token guided with the image's scale)."""
    for i in range(0, len(noise), chunk):
        z = generate(network, noise[i:i + chunk], labels[i:i + chunk], cfg_scale=cfg_scale, cls_cfg_scale=cfg_scale,
                     clip_denoised=codec.bounded, **generate_kwargs)
        yield codec.decode(z)


@torch.no_grad()
def sample_grid(images_of, noise, labels, path: Path, nrow: int = 8, names=None) -> None:
    """A PNG grid of ``images_of(noise, labels)`` (rows named after their class from ``names`` when each row
    shows one). Runs inside a forked RNG so that the training stream (and so exact resume) is untouched."""
    with side_stream(noise.device, 0):
        images = images_of(noise, labels)
        rows = row_labels(labels.tolist(), nrow, names) if names else None
        save_grid(images, path, nrow=nrow, row_labels=rows)


@torch.no_grad()
def evaluate_builtin(ema, codec, channels: int, latent_size: int, num_classes: int, device, run_dir: Path,
                     step: int, num_samples: int = 500, cfg_scale: float = 1.0, sampling_steps: int = 250,
                     **sampling) -> dict:
    """Class accuracy and Fréchet distance (proxy classifier features) of EMA samples.

    Appends a record to ``proxy_metrics.jsonl`` (a curve over training), writes the latest to
    ``proxy_metrics.json`` and a grid of up to 8 samples per class to ``eval_samples.png``, one row
    per class with its name. The record also holds what real images score at the same sample count
    and resolution (``real_class_accuracy``, ``real_proxy_fd``): the best a model can do.
    Sampling runs in a forked RNG so the training stream (and exact resume) is untouched.
    REG's class token is guided with the same scale as the image (``cls_cfg_scale = cfg_scale``).
    """
    from evaluations.proxy import proxy_metrics, real_image_scores
    from imagedata import class_names

    sampler = eval_sampler(ema)
    labels = (torch.arange(num_samples) % num_classes).to(device)
    with side_stream(device, 1):
        noise = torch.randn(num_samples, channels, latent_size, latent_size, device=device)
        images = torch.cat(list(sample_chunks(ema, codec, noise, labels, 500, sampler=sampler, num_steps=sampling_steps,
                                              cfg_scale=cfg_scale, num_classes=num_classes, **sampling)))
    result = proxy_metrics(to_uint8(images), labels.cpu().numpy(), num_classes=num_classes, device=str(device))
    real = real_image_scores(num_samples, images.shape[-1], num_classes)
    result = {"step": step, **{k: float(v) for k, v in result.items()}, "samples": num_samples,
              "cfg_scale": cfg_scale, "sampler": f"{sampler}{sampling_steps}",
              **{f"real_{k}": v for k, v in real.items()}}
    run_dir = Path(run_dir)
    with open(run_dir / "proxy_metrics.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    (run_dir / "proxy_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    per_class = max(1, min(8, num_samples // num_classes))
    order = torch.cat([torch.nonzero(labels == c)[:per_class, 0] for c in range(num_classes)])
    rows = row_labels(labels[order].tolist(), per_class, class_names("builtin", num_classes))
    save_grid(images[order], run_dir / "eval_samples.png", nrow=per_class, row_labels=rows)
    return result


class InceptionCurve:
    """ADM's metrics of ``num_samples`` EMA samples every N steps, against ``ref``: a curve over
    training. The reference features and the network are loaded once. Every process samples
    its share of the same fixed noise; the images are gathered so every process holds them all,
    and the evaluator shards the Inception features across the processes again.
    """

    def __init__(self, ref: str, device, inception_weights: str | None = None):
        from evaluations.evaluator import load_inception

        self.ref_path, self.device = ref, device
        self.model = load_inception(inception_weights, device)
        self.reference = None

    @torch.no_grad()
    def __call__(self, ema, codec, channels: int, latent_size: int, num_classes: int, run_dir: Path, step: int,
                 num_samples: int, cfg_scale: float, sampling_steps: int, rank: int, world: int,
                 **sampling) -> dict:
        from accelerate.utils import gather_object

        from evaluations.evaluator import evaluate, reference_features

        if self.reference is None:
            self.reference = reference_features(self.ref_path, self.model, progress=rank == 0)
        sampler = eval_sampler(ema)
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(num_samples, channels, latent_size, latent_size, generator=gen)
        labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
        start, stop = rank * num_samples // world, (rank + 1) * num_samples // world
        with side_stream(self.device, 1 + rank):
            mine = [to_uint8(images) for images in sample_chunks(
                ema, codec, noise[start:stop].to(self.device), labels[start:stop].to(self.device), 250,
                sampler=sampler, num_steps=sampling_steps, cfg_scale=cfg_scale, num_classes=num_classes, **sampling)]
        parts = gather_object([np.concatenate(mine) if mine else None])
        images = np.concatenate([p for p in parts if p is not None])
        metrics = evaluate(self.reference, images, self.model, progress=False)
        result = {"step": step, **{k: (float(v) if v is not None else None) for k, v in metrics.items()},
                  "cfg_scale": cfg_scale, "sampler": f"{sampler}{sampling_steps}"}
        if rank == 0:
            with open(Path(run_dir) / "inception_metrics.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
        return result
