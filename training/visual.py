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


def evaluate_builtin(ema, codec, channels: int, latent_size: int, num_classes: int, device,
                     run_dir: Path, per_class: int = 50, cfg_scale: float = 1.0,
                     num_sampling_steps: int = 250) -> dict:
    """Class accuracy and Fréchet distance (proxy classifier features) of EMA samples,
    written to ``proxy_metrics.json``; also saves ``final_samples.png``."""
    from evaluations.proxy import proxy_metrics

    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(1)
        labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
        noise = torch.randn(len(labels), channels, latent_size, latent_size, device=device)
        z = sample_latents(ema, create_diffusion(str(num_sampling_steps)), noise, labels, cfg_scale=cfg_scale,
                           num_classes=num_classes, progress=True)
        images = codec.decode(z)
    result = proxy_metrics(to_uint8(images), labels.cpu().numpy(), num_classes=num_classes, device=str(device))
    result = {**result, "samples": len(labels), "cfg_scale": cfg_scale, "sampler": f"ddpm{num_sampling_steps}"}
    (Path(run_dir) / "proxy_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    first = torch.cat([images[labels == c][:8] for c in range(num_classes)])
    save_grid(first, Path(run_dir) / "final_samples.png", nrow=8)
    return result
