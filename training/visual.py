"""Sample grids during training and the built-in dataset's proxy evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion import create_diffusion
from diffusion.pipeline import sample_latents
from training.monitor import save_grid, to_uint8

GRID_SAMPLER = "ddim50"  # deterministic DDIM, 50 steps: a quick, comparable view across checkpoints
GRID_CFG_SCALE = 4.0     # official sample.py default


@torch.no_grad()
def sample_grid(ema, codec, noise, labels, num_classes: int, path: Path) -> None:
    """Decode EMA samples for fixed noise and labels into a PNG grid. Runs inside a forked
    RNG so that the training stream (and so exact resume) is untouched."""
    devices = [noise.device] if noise.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        z = sample_latents(ema, create_diffusion(GRID_SAMPLER), noise, labels, cfg_scale=GRID_CFG_SCALE,
                           num_classes=num_classes, sampler="ddim")
        save_grid(codec.decode(z), path, nrow=8)


def evaluate_builtin(ema, codec, channels: int, latent_size: int, num_classes: int, device, run_dir: Path,
                     step: int, num_samples: int = 500, cfg_scale: float = 1.0, sampling_steps: int = 250) -> dict:
    """Class accuracy and Fréchet distance (proxy classifier features) of EMA samples.

    Appends a record to ``proxy_metrics.jsonl`` (a curve over training), writes the latest to
    ``proxy_metrics.json`` and a grid of up to 8 samples per class to ``eval_samples.png``.
    Sampling runs in a forked RNG so the training stream (and exact resume) is untouched.
    """
    from evaluations.proxy import proxy_metrics

    devices = [device] if torch.device(device).type == "cuda" else []
    labels = (torch.arange(num_samples) % num_classes).to(device)
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(1)
        noise = torch.randn(num_samples, channels, latent_size, latent_size, device=device)
        images = []
        for start in range(0, num_samples, 500):
            z = sample_latents(ema, create_diffusion(str(sampling_steps)), noise[start:start + 500],
                               labels[start:start + 500], cfg_scale=cfg_scale, num_classes=num_classes)
            images.append(codec.decode(z))
        images = torch.cat(images)
    result = proxy_metrics(to_uint8(images), labels.cpu().numpy(), num_classes=num_classes, device=str(device))
    result = {"step": step, **{k: float(v) for k, v in result.items()}, "samples": num_samples,
              "cfg_scale": cfg_scale, "sampler": f"ddpm{sampling_steps}"}
    run_dir = Path(run_dir)
    with open(run_dir / "proxy_metrics.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    (run_dir / "proxy_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    order = torch.cat([torch.nonzero(labels == c)[:8, 0] for c in range(num_classes)])
    save_grid(images[order], run_dir / "eval_samples.png", nrow=8)
    return result
