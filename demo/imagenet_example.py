"""DMD2's ImageNet example: 64 images of random classes from a one-step generator, saved as an 8 x 8 grid.

  python -m demo.imagenet_example --checkpoint_path IMAGENET_CKPT_PATH

As DMD2's ``demo/imagenet_example.py``: seed 10 (Python, NumPy and torch), the labels drawn before the noise,
each image the generator's x0 from noise at ``--conditioning_sigma`` (80) in one step, uint8 by truncation, the
grid written to ``imagenet_grid.jpg`` in the working folder. The checkpoint is DMD2's released generator
(``pytorch_model.bin`` or its folder) or a ``train_dmd2.py`` checkpoint of an EDM teacher.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.cli import first_paragraph, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--checkpoint_path", type=str, required=True)
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--label_dim", type=int, default=1000)
    p.add_argument("--sigma_max", type=float, default=80.0, help="accepted, as DMD2's demo does; unused there too")
    p.add_argument("--sigma_min", type=float, default=0.002, help="accepted, as DMD2's demo does; unused there too")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--dataset_name", type=str, default="imagenet")
    p.add_argument("--conditioning_sigma", type=float, default=80.0)
    return p.parse_args(argv)


def grid(images: np.ndarray, resolution: int) -> np.ndarray:
    """The first side x side images (side = floor(sqrt(n))) tiled row by row, no padding, as DMD2 tiles them."""
    side = int(len(images) ** 0.5)
    tiles = images[: side * side].reshape(side, side, resolution, resolution, 3)
    return np.swapaxes(tiles, 1, 2).reshape(side * resolution, side * resolution, 3)


@torch.no_grad()
def draw(model, args: argparse.Namespace, device) -> np.ndarray:
    """DMD2's demo images, uint8 NHWC: the seed, then the labels, then the noise; one step; truncation."""
    from accelerate.utils import set_seed

    from diffusion.pipeline import generate

    set_seed(args.seed)
    labels = torch.randint(0, args.label_dim, (args.eval_batch_size,), device=device)
    noise = torch.randn(args.eval_batch_size, 3, args.resolution, args.resolution, device=device)
    images = generate(model, noise, labels, sampler="fewstep", num_steps=1)
    return ((images + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def main(args: argparse.Namespace) -> Path:
    from diffusion.network import unwrap
    from models.pretrained import Query, build_for_sampling, load_codec, sampling_config

    path = Path(args.checkpoint_path)
    path = path / "pytorch_model.bin" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"--checkpoint_path {args.checkpoint_path}: no such file; pass DMD2's generator "
                         "(pytorch_model.bin) or a train_dmd2.py checkpoint")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state_dict, cfg = sampling_config(Query(ckpt=str(path)))
    if not cfg.get("generator_sigmas") or cfg["image_size"] != args.resolution or cfg["num_classes"] != args.label_dim:
        raise ValueError(f"--checkpoint_path {path}: a {cfg['image_size']} px, {cfg['num_classes']}-class "
                         f"{'generator' if cfg.get('generator_sigmas') else 'diffusion model'}, not DMD2's one-step "
                         f"{args.resolution} px generator of {args.label_dim} classes")
    codec = load_codec(cfg, device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    unwrap(model).generator_sigmas = [args.conditioning_sigma]  # one step from --conditioning_sigma
    images = draw(model, args, device)
    out = Path("imagenet_grid.jpg")
    Image.fromarray(grid(images, args.resolution)).save(out)
    print(f"saved {len(images)} images of {path} to {out}")
    return out


if __name__ == "__main__":
    run_cli(main, parse_args())
