"""The CIFAR-10 U-Net's training entry point, as its seed project runs it: the full run or the overfit run.

  python train_model.py --full                      # CIFAR-10 at 128x128 (32x32 on a CPU), the full recipe
  python train_model.py --overfit --samples 1       # one image per class: checkpoints_overfit/, overfit report
  python train_model.py --overfit --samples 1 --epochs 2 --image-size 32      # any train.py flag overrides

The recipe of each mode is a list of ``train.py`` flags (cosine schedule, gradient clipping and the U-Net's
shape are ``train.py``'s U-Net defaults); flags after the mode go to ``train.py`` and win over the recipe.
``make train``, ``make overfit`` and ``make quick-test`` call this script.
"""

from __future__ import annotations

import argparse
import sys

import torch

import train
from common.cli import first_paragraph, run_cli
from training.engine import NonFiniteLoss

COMMON = ["--model", "UNet", "--num-classes", "10", "--vae", "none", "--eval-sampling-steps", "100"]
FULL = ["--global-batch-size", "128", "--epochs", "100", "--lr", "2e-4", "--lr-warmup-steps", "1000",
        "--lr-schedule", "cosine", "--ema-decay", "0.9999", "--log-every", "100", "--ckpt-every", "5000"]


def overfit(samples: int) -> list[str]:
    """Every image in each batch, a short EMA so that the samples follow the weights."""
    return ["--overfit", "--samples", str(samples), "--global-batch-size", str(10 * samples), "--epochs", "1500",
            "--lr", "1e-3", "--lr-warmup-steps", "50", "--lr-schedule", "cosine", "--ema-decay", "0.99",
            "--log-every", "50", "--ckpt-every", "500"]


def parse_args(argv=None) -> argparse.Namespace:
    """The mode and its recipe, then the other flags, as ``train.py``'s arguments."""
    p = argparse.ArgumentParser(description=first_paragraph(__doc__), add_help=False)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="full training on the whole dataset")
    mode.add_argument("--overfit", action="store_true", help="train on --samples images of each class")
    p.add_argument("--samples", type=int, default=1, help="images per class with --overfit")
    p.add_argument("-h", "--help", action="help")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.samples < 1:
        p.error("--samples must be at least 1")
    gpu = torch.cuda.is_available()
    device = ["--image-size", "128" if gpu else "32", "--num-workers", "4" if gpu else "0"]
    return train.parse_args([*COMMON, *device, *(FULL if args.full else overfit(args.samples)), *rest])


if __name__ == "__main__":
    run_cli(train.main, parse_args(), (NonFiniteLoss,))
