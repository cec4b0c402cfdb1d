"""Sample a grid of images from any model: an official DiT release, REPA / REG checkpoints, or train.py's.

  python sample.py --image-size 512 --seed 1                   # official DiT-XL/2 512x512
  python sample.py --model DiT-L/4 --image-size 256 --ckpt /path/to/model.pt
  python sample.py --ckpt results/000-DiT-Ti-4/checkpoints/0002000.pt --sampler ddim --num-sampling-steps 50
  python sample.py --model SiT-XL/2 --ckpt last.pt --sampler ode --num-sampling-steps 50   # REPA
  python sample.py --ckpt results/000-UNet/checkpoints/0100000.pt --samples 4         # U-Net: 4 per class
  python sample.py --ckpt DiT-XL-2-256x256.pt --sampler ode --heun --num-sampling-steps 25   # any model, any sampler
Writes ``sample.png`` (or ``--output``).
"""

from __future__ import annotations

import argparse

import torch

from common.cli import first_paragraph, run_cli, use_local_rank
from common.monitor import row_labels, save_grid
from common.setup import enable_tf32
from diffusion.pipeline import generate
from evaluations.sampling_cli import add_sampling_args, check_sampling_args, choose_sampler, sampling_settings
from imagedata import class_names
from models.pretrained import build_for_sampling, load_codec, resolve_sampling_config

IMAGENET_DEMO_CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]  # official sample.py


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_sampling_args(p, repa_names=False, cfg_scale=4.0, num_steps=250, model_default="DiT-XL/2 (official weights, downloaded without --ckpt)",
                      vae_default="mse",
                      sampler_default="ddpm for DiT and the U-Net, ode for SiT / REPA, sde for REG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-labels", type=int, nargs="+", default=None,
                   help="default: the official eight ImageNet classes, or the first classes of the checkpoint")
    p.add_argument("--samples", type=int, default=1,
                   help="samples of each class in --class-labels; the grid then has one row per class")
    p.add_argument("--output", type=str, default="sample.png")
    args = p.parse_args(argv)
    args.default_vae, args.flow_default = "mse", "ode"
    use_local_rank(args)
    return args


@torch.no_grad()
def main(args: argparse.Namespace) -> None:
    check_sampling_args(args)
    torch.manual_seed(args.seed)
    enable_tf32()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state_dict, cfg = resolve_sampling_config(args)
    args.sampler = choose_sampler(args, cfg)
    codec = load_codec(cfg, device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    labels = args.class_labels
    if labels is None:
        labels = IMAGENET_DEMO_CLASSES if cfg["num_classes"] == 1000 else list(range(min(cfg["num_classes"], 16)))
    bad = [c for c in labels if not 0 <= c < cfg["num_classes"]]
    if bad:
        raise ValueError(f"--class-labels {bad} outside 0..{cfg['num_classes'] - 1}")
    labels = [c for c in labels for _ in range(args.samples)]
    settings = sampling_settings(args, cfg, codec)
    size = cfg["image_size"] // codec.downsample
    noise = torch.randn(len(labels), codec.latent_channels, size, size, device=device)
    y = torch.tensor(labels, device=device)
    z = generate(model, noise, y, progress=True, **settings["kwargs"])
    nrow = args.samples if args.samples > 1 else 4
    rows = row_labels(labels, nrow, class_names(cfg["dataset"], cfg["num_classes"])) if args.samples > 1 else None
    save_grid(codec.decode(z), args.output, nrow=nrow, row_labels=rows)
    print(f"saved {len(labels)} samples of {cfg['model']} ({cfg['ckpt']}) to {args.output}")


if __name__ == "__main__":
    run_cli(main, parse_args())
