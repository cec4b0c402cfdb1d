"""Train a class-conditional DiT or U-Net (DDPM) or SiT / REPA / REG (interpolant) model, on images or latents.

  torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/imagenet/train
  accelerate launch --multi_gpu --num_processes 8 train.py --model SiT-XL/2 --enc-type dinov2-vit-b \\
      --encoder-depth 8 --proj-coeff 0.5 --cls 0.03 --batch-size 256 --data-dir data/ --exp-name reg
  python train.py --dataset builtin --model DiT-Ti/4 --image-size 32 --vae none --max-steps 2000
  python train.py --model UNet --dataset cifar10 --image-size 128 --vae none      # the CIFAR-10 U-Net
  python train.py --model UNet --dataset cifar10 --vae none --overfit --samples 1  # one image per class

The families keep their original's flags and defaults (``training/recipes.py``). The story: check
the flags, the data and the checkpoint to resume; build the codec, the network and its training
method (``training/methods.py``); only then open the run folder; then the engine
(``training/engine.py``) trains, logging, checkpointing and evaluating on the way.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from models.vae import load_vae
from training import checkpoint as ckpt_io
from training.cli import check_writable_dir, first_paragraph, run_cli
from training.data import batch_sizes, make_loader
from training.engine import Engine, NonFiniteLoss
from training.hooks import RunHooks
from training.recipes import (
    build_method,
    check_resume_args,
    open_dataset,
    resume_checkpoint_path,
    use_tf32,
    validate,
)
from training.recipes import parse_args as recipe_args
from training.run import checkpoint_dir, open_run, plan_run_folder
from training.schedule import lr_at
from training.setup import prepare_tracker, seed_everything, setup_accelerator
from training.throughput import train_flops_per_sample

__all__ = ["main", "parse_args", "validate", "NonFiniteLoss"]


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


def main(args: argparse.Namespace) -> None:
    validate(args)
    kind, dataset, names = open_dataset(args)
    ckpt_subdir = checkpoint_dir(args.overfit)
    resume_path = resume_checkpoint_path(args, ckpt_subdir)
    resume = ckpt_io.load_training_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        check_resume_args(resume, args)
    check_writable_dir(args.results_dir, "--results-dir")

    accelerator = setup_accelerator(args.mixed_precision, args.report_to, allow_tf32=use_tf32(args))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    accum = args.gradient_accumulation_steps
    local_batch, update_batch = batch_sizes(args.global_batch_size, world, accum, "--global-batch-size")
    seed_everything(args.global_seed * world + rank)  # DiT: a distinct stream per rank

    # Everything that can fail comes before the run folder: codec, encoders, network, data order, steps.
    codec = load_vae(args.vae, device)  # with cached latents: only to decode the sample grids
    method = build_method(args, kind, dataset, codec, device)
    model, mk = method.modules["model"], method.model_kwargs
    flops = train_flops_per_sample(model.eval(), *example_inputs(model, mk["in_channels"], mk["input_size"], device))
    loader, sampler = make_loader(dataset, local_batch, world, rank, args.global_seed, args.num_workers)
    steps_per_epoch = len(sampler) // local_batch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {local_batch} per process; "
                         "lower --global-batch-size")
    total = min(args.max_steps or sys.maxsize, args.epochs * steps_per_epoch)
    steps = resume["steps"] if resume else 0
    if total <= steps:
        raise ValueError(f"nothing to do: {resume_path} is at step {steps} and this run stops at step {total} "
                         "(--max-steps, --epochs); raise --max-steps to train further")
    run_folder = plan_run_folder(args.results_dir, args.model, args.exp_name, resume_path, steps, ckpt_subdir)
    tracker_note = prepare_tracker(args.report_to)

    # Only now is anything written: a new run folder, or the resumed run's own (its newest checkpoint).
    run_dir, logger = open_run(accelerator, run_folder, ckpt_subdir, args, f"{kind} ({len(dataset):,} items)", tracker_note)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"{args.model}: {n_params:,} parameters, input {mk['in_channels']}x{mk['input_size']}x"
                f"{mk['input_size']}" + (f"; aligned to {args.enc_type} after block {model.encoder_depth}"
                                         if getattr(method, "encoders", None) else ""))

    schedule = partial(lr_at, schedule=args.lr_schedule, warmup_steps=args.lr_warmup_steps, total_steps=total,
                       min_lr=args.min_lr)
    engine = Engine(accelerator, method, grad_accum=accum, lr_at=schedule, shard=args.fsdp)
    if resume is not None:
        engine.load_state_dict(resume, logger)
        engine.saved.append((steps, resume_path))
    else:
        engine.init_emas()
    model.train()
    hooks = RunHooks(engine, args, run_dir, ckpt_subdir, logger, codec, names, kind, dataset)
    batch = f"{update_batch}" + (f" ({accum} micro-batches of {args.global_batch_size})" if accum > 1 else "")
    logger.info(f"training for {total:,} steps ({steps_per_epoch:,} per epoch), global batch {batch}, from step {steps}")
    every = {args.ckpt_every: [hooks.checkpoint]}
    every.setdefault(args.eval_every, []).append(hooks.evaluate)  # after the checkpoint of the same step
    engine.train(engine.batches(loader, sampler, local_batch), total, log_every=args.log_every, log=hooks.log,
                 every=every, global_batch=update_batch, flops_per_sample=flops,
                 mixed_precision=args.mixed_precision)
    hooks.finish()
    accelerator.end_training()


def example_inputs(model, channels: int, latent_size: int, device) -> tuple:
    """One input of each kind the model takes, for the FLOP count."""
    import torch

    inputs = (torch.zeros(1, channels, latent_size, latent_size, device=device),
              torch.zeros(1, device=device), torch.zeros(1, device=device, dtype=torch.long))
    cls_dim = getattr(model, "cls_token_dim", None)
    return inputs + ((torch.zeros(1, cls_dim, device=device),) if cls_dim else ())


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
