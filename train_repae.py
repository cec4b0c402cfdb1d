"""REPA-E: train the VAE and a SiT end to end (VAE + discriminator + SiT, three optimizers, one step each).

  accelerate launch train_repae.py --max-train-steps 400000 --report-to wandb --allow-tf32 \\
      --mixed-precision fp16 --seed 0 --data-dir data --output-dir exps --batch-size 256 --path-type linear \\
      --prediction v --weighting uniform --model SiT-XL/2 --checkpointing-steps 50000 \\
      --loss-cfg-path configs/l1_lpips_kl_gan.yaml --vae f8d4 --vae-ckpt pretrained/sdvae/sdvae-f8d4.pt \\
      --disc-pretrained-ckpt pretrained/sdvae/sdvae-f8d4-discriminator-ckpt.pt --enc-type dinov2-vit-b \\
      --proj-coeff 0.5 --encoder-depth 8 --vae-align-proj-coeff 1.5 --bn-momentum 0.1 --exp-name sit-xl-repae

The flags are REPA-E's. The story is train.py's: check the flags, the data and the checkpoint to resume;
build the VAE, the SiT, the discriminator and the losses (``training/repae_recipe.py``) into the method
(``training/repae.py``); only then open the run folder; then the engine trains, checkpointing and
drawing EMA samples (decoded by the VAE being trained) on the way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data import class_names
from models.vae import VAECodec
from training import checkpoint as ckpt_io
from training.cli import check_writable_dir, first_paragraph, run_cli
from training.data import batch_sizes, make_loader
from training.engine import Engine, NonFiniteLoss
from training.hooks import RunHooks
from training.repae_recipe import build_ldm_method, build_method, open_dataset, validate
from training.repae_recipe import parse_args as recipe_args
from training.run import open_run, plan_run_folder
from training.setup import prepare_tracker, seed_everything, setup_accelerator

CKPT_SUBDIR = "checkpoints"
RESUME_KEYS = ("model", "vae", "image_size", "num_classes", "global_batch_size", "global_seed", "enc_type",
               "encoder_depth", "proj_coeff", "path_type", "weighting", "bn_momentum", "cfg_prob", "dataset")


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


def released(resume: dict) -> dict:
    """A checkpoint of REPA-E's own code (no RNG or data position) as the engine resumes it: the weights and
    the SiT's optimizer; REPA-E's ``opt_vae`` and ``opt_disc`` list their parameters in another order
    (LDM modules; the whole loss module), so those two start afresh."""
    state = {k: v for k, v in resume.items() if k not in ("opt_vae", "opt_disc")}
    state["args"] = vars(state["args"]) if isinstance(state["args"], argparse.Namespace) else state["args"]
    return state


def main(args: argparse.Namespace) -> None:
    validate(args)
    resume = ckpt_io.load_training_checkpoint(args.resume) if args.resume else None
    if resume is not None and "rng" not in resume:
        resume = released(resume)
    for key in RESUME_KEYS if resume else ():
        if key in resume["args"] and resume["args"][key] != getattr(args, key):
            raise ValueError(f"--resume-step: the checkpoint was trained with --{key.replace('_', '-')} "
                             f"{resume['args'][key]}, not {getattr(args, key)}; pass the same flags")
    check_writable_dir(args.results_dir, "--output-dir")
    accelerator = setup_accelerator(args.mixed_precision, args.report_to, allow_tf32=args.allow_tf32)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    accum = args.gradient_accumulation_steps
    local_batch, update_batch = batch_sizes(args.global_batch_size, world, accum, "--batch-size")
    seed_everything(args.global_seed * world + rank)

    dataset = open_dataset(args)
    frozen_vae = None
    if args.ldm_only:
        method, frozen_vae = build_ldm_method(args, dataset, device)
    else:
        method = build_method(args, dataset, device)
    if world > 1 and device.type == "cuda":  # the latent BatchNorm sees the global batch, as REPA-E
        method.modules["model"] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.modules["model"])
    loader, sampler = make_loader(dataset, local_batch, world, rank, args.global_seed, args.num_workers)
    steps_per_epoch = len(sampler) // local_batch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch; lower --batch-size")
    total = min(args.max_steps, args.epochs * steps_per_epoch)
    steps = resume["steps"] if resume else 0
    if total <= steps:
        raise ValueError(f"nothing to do: the checkpoint is at step {steps}; raise --max-train-steps")
    run_folder = plan_run_folder(args.results_dir, args.model, args.exp_name, Path(args.resume) if resume else None,
                                 steps, CKPT_SUBDIR)
    tracker_note = prepare_tracker(args.report_to)

    run_dir, logger = open_run(accelerator, run_folder, CKPT_SUBDIR, args, f"{args.dataset} ({len(dataset):,} items)", tracker_note, args.logging_dir)
    for key, module in method.modules.items():
        logger.info(f"{key}: {sum(p.numel() for p in module.parameters()):,} parameters")

    engine = Engine(accelerator, method, grad_accum=accum)
    if resume is not None:
        engine.load_state_dict(resume, logger)
        engine.saved.append((steps, Path(args.resume)))
    else:
        engine.init_emas()
    if args.compile:
        method.modules["model"] = torch.compile(method.modules["model"])
    codec = VAECodec(frozen_vae if args.ldm_only else engine.module("vae"))
    names = class_names(args.dataset, args.num_classes, dataset)
    hooks = RunHooks(engine, args, run_dir, CKPT_SUBDIR, logger, codec, names, args.dataset, dataset)
    logger.info(f"training for {total:,} steps ({steps_per_epoch:,} per epoch), batch {update_batch}, "
                f"from step {steps}")
    every = {args.ckpt_every: [hooks.save]}
    every.setdefault(args.sampling_steps, []).append(hooks.grid)
    if args.eval_every:
        every.setdefault(args.eval_every, []).append(hooks.evaluate)
    engine.train(engine.batches(loader, sampler, local_batch), total, log_every=args.log_every, log=hooks.log,
                 every=every, global_batch=update_batch, mixed_precision=args.mixed_precision)
    hooks.finish()
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))

