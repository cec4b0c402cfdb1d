"""Train a class-conditional DiT or U-Net (DDPM) or SiT / REPA / REG (interpolant) model, on images or latents.

  torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/imagenet/train
  accelerate launch --multi_gpu --num_processes 8 train.py --model SiT-XL/2 --enc-type dinov2-vit-b \\
      --encoder-depth 8 --proj-coeff 0.5 --cls 0.03 --batch-size 256 --data-dir data/ --exp-name reg
  python train.py --dataset builtin --model DiT-Ti/4 --image-size 32 --vae none --max-steps 2000
  python train.py --model UNet --dataset cifar10 --image-size 128 --vae none      # the CIFAR-10 U-Net
  python train.py --model UNet --dataset cifar10 --vae none --overfit --samples 1  # one image per class

The families keep their original's flags and defaults (``methods/denoising_cli.py``). The story: check
the flags, the data and the checkpoint to resume; build the codec, the network and its training
method (``methods/denoising.py``); only then open the run folder; then the engine
(``training/engine.py``) trains, logging, checkpointing and evaluating on the way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import first_paragraph, run_cli
from methods.denoising_cli import (
    RESUME_KEYS,
    build_method,
    open_dataset,
    resume_checkpoint_path,
    use_tf32,
    validate,
)
from methods.denoising_cli import parse_args as recipe_args
from models.vae import load_vae
from training.engine import NonFiniteLoss
from training.fit import Checkpoints, Evaluation, Grids, Resume, RunSpec, Trackers, TrainData, fit
from training.run import checkpoint_dir

__all__ = ["main", "parse_args", "validate", "NonFiniteLoss"]


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


def main(args: argparse.Namespace) -> None:
    validate(args)
    kind, dataset, names = open_dataset(args)
    folder = checkpoint_dir(args.overfit)
    resume = resume_checkpoint_path(args, folder)

    def build(process):
        """Everything that can fail comes before the run folder: codec, encoders, network."""
        codec = load_vae(args.vae, process.device)  # with cached latents: only to decode the sample grids
        return build_method(args, dataset, codec, process.device), TrainData(dataset, kind, names, overfit=args.overfit)

    fit(build, RunSpec(
        results_dir=args.results_dir, run_name=args.model, exp_name=args.exp_name, record=vars(args),
        max_steps=args.max_steps, epochs=args.epochs, batch_size=args.global_batch_size,
        grad_accum=args.gradient_accumulation_steps, seed=args.global_seed, num_workers=args.num_workers,
        mixed_precision=args.mixed_precision, allow_tf32=use_tf32(args), shard=args.fsdp, shard_flag="--fsdp", log_every=args.log_every,
        checkpoints=Checkpoints(every=args.ckpt_every, folder=folder),
        grids=Grids(every=args.sample_every or args.ckpt_every, seed=args.global_seed),
        evaluation=Evaluation(args.eval_every, args.eval_samples, args.eval_sampling_steps, args.eval_cfg_scale,
                              args.eval_ref, args.inception_weights),
        resume=Resume(resume, RESUME_KEYS), initial=Path(args.ckpt) if args.ckpt else None,
        trackers=Trackers(args.report_to)))


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
