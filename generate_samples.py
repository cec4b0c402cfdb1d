"""The CIFAR-10 U-Net's sampling entry point, as its seed project runs it: samples of every class from a checkpoint.

  python generate_samples.py results/000-UNet/checkpoints/0100000.pt --samples 4

``--samples`` images of each of the ten classes with DDPM (1,000 steps on a GPU, 50 on a CPU unless
``--num-sampling-steps`` says), guided at ``--cfg-scale`` 2, into the checkpoint's run folder as
``generated.png`` (a row per class, named). ``make generate`` calls it with the newest checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sample
from common.cli import first_paragraph, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("checkpoint", type=str)
    p.add_argument("--samples", type=int, default=4, help="samples of each class")
    p.add_argument("--num-sampling-steps", type=int, default=1000 if torch.cuda.is_available() else 50)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=str, default=None, help="default: generated.png in the checkpoint's run folder")
    args = p.parse_args(argv)
    output = args.output or str(Path(args.checkpoint).resolve().parent.parent / "generated.png")
    return sample.parse_args(["--ckpt", args.checkpoint, "--samples", str(args.samples), "--class-labels",
                              *map(str, range(10)), "--sampler", "ddpm", "--num-sampling-steps",
                              str(args.num_sampling_steps), "--cfg-scale", str(args.cfg_scale), "--seed",
                              str(args.seed), "--output", output])


if __name__ == "__main__":
    run_cli(sample.main, parse_args())
