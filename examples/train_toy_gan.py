"""Train the toy GAN (``examples/toy_gan.py``) on the built-in images: parse the flags, build the method, ``fit``.

  python -m examples.train_toy_gan --max-steps 2000
  python -m examples.train_toy_gan --max-steps 4000 --resume results/000-ToyGAN/checkpoints/0002000.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import first_paragraph, run_cli
from examples.toy_gan import ToyGAN
from imagedata import build_dataset, class_names
from training.fit import Checkpoints, Grids, Resume, RunSpec, TrainData, fit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--results-dir", type=str, default="results")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", type=str, default=None, help="a checkpoint of this script")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    def build(process):
        dataset = build_dataset("builtin", None, args.image_size, 10)
        method = ToyGAN(args.image_size, 10, process.device, lr=args.lr)
        return method, TrainData(dataset, "builtin", class_names("builtin", 10, dataset))

    return fit(build, RunSpec(
        results_dir=args.results_dir, run_name="ToyGAN", record=vars(args), max_steps=args.max_steps,
        batch_size=args.batch_size, seed=args.seed, num_workers=0, log_every=50,
        checkpoints=Checkpoints(every=args.ckpt_every), grids=Grids(every=args.ckpt_every, seed=args.seed),
        resume=Resume(Path(args.resume) if args.resume else None, ("image_size", "batch_size", "seed"),
                      keys=("generator", "ema", "opt_g", "args", "steps"), script="examples/train_toy_gan.py")))


if __name__ == "__main__":
    run_cli(main, parse_args())
