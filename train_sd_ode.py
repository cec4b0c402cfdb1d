"""DMD2's regression pretraining of a one-step Stable Diffusion generator on the teacher's noise-image pairs
(DMD2's ``main/train_sd_ode.py``, its flags; the method is ``methods/ode_regression.py``).

  torchrun --nproc_per_node 8 train_sd_ode.py --model_id stabilityai/stable-diffusion-xl-base-1.0 --sdxl \\
      --tiny_vae --ode_pair_path sdxl_ode_pair_10k_lmdb --num_ode_pairs 10000 --ode_batch_size 4 \\
      --conditioning_timestep 399 --generator_lr 1e-5 --resolution 1024 --use_fp16
  accelerate launch train_dmd2.py ... --conditioning_timestep 399 --generator_ckpt_path RUN/checkpoint_model_002000

The pairs come from ``preprocessing/generate_noise_image_pairs.py`` and ``preprocessing/create_lmdb_iterative.py``
(or DMD2's download). The generator starts from the teacher's UNet (``--ckpt_only_path``: a DMD2 checkpoint folder's
or a checkpoint's weights); checkpoints hold it under ``model`` and record how it samples, so ``sample.py --prompt``
reads them; ``--checkpoint_layout dmd2`` also writes DMD2's ``checkpoint_model_NNNNNN/pytorch_model.bin``, which
``train_dmd2.py --generator_ckpt_path`` reads. The sample grids show the generator's one-step images of the first
pairs' prompts.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from common.cli import check_writable_dir, first_paragraph, require_positive, run_cli, use_local_rank
from methods.dmd2_cli import add_flag, run_parts
from training.engine import NonFiniteLoss
from training.fit import Checkpoints, Grids, RunSpec, TrainData, fit

CKPT_KEYS = ("model", "opt", "args", "steps")
RESUME_KEYS = ("model_id", "ode_pair_path", "ode_batch_size", "conditioning_timestep", "denoising",
               "num_denoising_step", "tiny_vae")
GRID = 1000  # the teacher's timesteps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_flag(p, "model_id", type=str, default="runwayml/stable-diffusion-v1-5", help="the teacher: a hub id or a "
             "diffusers folder")
    add_flag(p, "revision", type=str, default=None, help="the hub revision of a --model_id hub id")
    add_flag(p, "ode_pair_path", type=str, required=True, help="the noise-image pairs' LMDB")
    add_flag(p, "num_ode_pairs", type=int, default=0, help="read only the first N pairs (0: all)")
    add_flag(p, "ode_batch_size", type=int, default=8, help="pairs per process and step")
    add_flag(p, "output_path", type=str, default="results", help="the run folders' parent")
    add_flag(p, "exp_name", type=str, default=None, help="run folder {output_path}/{exp_name} (default: numbered)")
    add_flag(p, "train_iters", type=int, default=1_000_000)
    add_flag(p, "log_iters", type=int, default=100, help="checkpoint every N steps")
    add_flag(p, "wandb_iters", type=int, default=100, help="log the loss and draw a sample grid every N steps")
    add_flag(p, "seed", type=int, default=0)
    add_flag(p, "resolution", type=int, default=None, help="image resolution (checked against the teacher's)")
    add_flag(p, "generator_lr", type=float, default=None, help="the learning rate (default: --lr)")
    add_flag(p, "lr", type=float, default=1e-5, help="the learning rate when --generator_lr is not given")
    add_flag(p, "warmup_step", type=int, default=500, help="linear warm-up from 0 over warmup_step / processes "
             "iterations (DMD2's accelerate-prepared constant_with_warmup)")
    add_flag(p, "max_grad_norm", type=float, default=10.0, help="clip the gradient's norm (0: never)")
    add_flag(p, "gradient_accumulation_steps", type=int, default=1, help="1, as DMD2's")
    add_flag(p, "use_fp16", action="store_true", help="bfloat16 autocast (DMD2's --use_fp16 means bf16)")
    add_flag(p, "num_train_timesteps", type=int, default=GRID, help="the teacher's timesteps: 1000")
    add_flag(p, "conditioning_timestep", type=int, default=999, help="the generator's timestep (DMD2's SDXL "
             "one-step recipe: 399)")
    add_flag(p, "denoising", action="store_true", help="pairs hold trajectories: one random point a pair, at the "
             "few-step generator's timesteps")
    add_flag(p, "num_denoising_step", type=int, default=1)
    add_flag(p, "sdxl", action="store_true", help="the teacher is SDXL (checked against its UNet)")
    add_flag(p, "tiny_vae", action="store_true", help="SDXL: decode with TAESD (madebyollin/taesdxl), as DMD2 does")
    add_flag(p, "num_workers", type=int, default=12)
    run = p.add_argument_group("checkpoints and logging")
    add_flag(run, "checkpoint_path", type=str, default=None, help="resume exactly from a train_sd_ode.py checkpoint")
    add_flag(run, "ckpt_only_path", type=str, default=None, help="start from these generator weights: a DMD2 "
             "checkpoint folder (its pytorch_model.bin), a state dict file or a checkpoint of this script")
    add_flag(run, "no_save", action="store_true", help="write no checkpoints (debugging)")
    add_flag(run, "checkpoint_layout", choices=["ours", "dmd2"], default="ours", help="dmd2: also write "
             "checkpoint_model_NNNNNN/pytorch_model.bin (the generator's UNet), as DMD2 does")
    add_flag(run, "cache_dir", type=str, default="", help="also copy every checkpoint to {cache_dir}/{run folder}/")
    add_flag(run, "max_checkpoint", type=int, default=150, help="checkpoints kept in --cache_dir")
    add_flag(run, "grid_size", type=int, default=4, help="the sample grids show grid_size^2 samples")
    add_flag(run, "report_to", choices=["none", "wandb", "tensorboard"], default=None,
             help="default: wandb when a --wandb_* flag is given, else none")
    add_flag(run, "wandb_project", type=str, default=None)
    add_flag(run, "wandb_entity", type=str, default=None)
    add_flag(run, "wandb_name", type=str, default=None)
    add_flag(run, "log_path", type=str, default=None, help="the trackers' folder (default: the run folder)")
    add_flag(run, "local_rank", type=int, default=-1, help="torch.distributed.launch's rank on this node")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    from methods.dmd2_cli import validate_teacher

    args.teacher = args.model_id
    validate_teacher(args)
    require_positive(args, "ode_batch_size", "train_iters", "log_iters", "wandb_iters", "num_denoising_step",
                     "grid_size", "max_checkpoint", flag="--{}".format)
    if not Path(args.ode_pair_path).is_dir():
        raise ValueError(f"--ode_pair_path {args.ode_pair_path}: no such folder (an LMDB of noise-image pairs, "
                         "made by preprocessing/create_lmdb_iterative.py)")
    if args.gradient_accumulation_steps != 1:
        raise ValueError("--gradient_accumulation_steps must be 1, as in DMD2; raise --ode_batch_size instead")
    if args.num_train_timesteps != GRID:
        raise ValueError(f"--num_train_timesteps {args.num_train_timesteps}: Stable Diffusion has {GRID} timesteps")
    if not 0 <= args.conditioning_timestep < GRID:
        raise ValueError(f"--conditioning_timestep {args.conditioning_timestep}: choose one in [0, {GRID})")
    if args.num_denoising_step > 1 and not args.denoising:
        raise ValueError("--num_denoising_step > 1 reads trajectories: add --denoising")
    for name in ("ckpt_only_path", "checkpoint_path"):
        if getattr(args, name) and not Path(getattr(args, name)).exists():
            raise ValueError(f"--{name} {getattr(args, name)} does not exist")
    if args.ckpt_only_path and args.checkpoint_path:
        raise ValueError("--ckpt_only_path and --checkpoint_path: the checkpoint already holds the weights; pass one")
    if args.report_to is None:  # DMD2 always logs to wandb; its flags ask for it here
        args.report_to = "wandb" if args.wandb_project or args.wandb_entity or args.wandb_name else "none"
    for flag in ("cache_dir", "log_path"):
        if getattr(args, flag):
            check_writable_dir(getattr(args, flag), f"--{flag}")
    use_local_rank(args)


def timesteps(args) -> list[int]:
    """The conditioning timestep, or DMD2's step list of a --denoising generator (999, 749, ... for four)."""
    if not args.denoising:
        return [args.conditioning_timestep]
    return list(range(GRID - 1, 0, -(GRID // args.num_denoising_step)))


def build_method(args, process):
    """The teacher's parts, the pairs and the method; everything that can fail comes before the run folder."""
    from imagedata.lmdb import LMDBODEPairs
    from loss.perceptual import piq_lpips
    from methods.dmd2_cli import generator_record
    from methods.dmd2_teacher import DDPMTeacher
    from methods.dmd2_text import load_sd_parts
    from methods.dmd2_weights import generator_weights, load_into
    from methods.ode_regression import ODERegressionMethod
    from models.stable_diffusion import DiffusersEps

    source, scheduler, unet, codec = load_sd_parts(args.model_id, args.revision, args.sdxl, args.tiny_vae)
    pairs = LMDBODEPairs(args.ode_pair_path, args.num_ode_pairs)
    image_size = unet.config.sample_size * codec.downsample
    if args.resolution is not None and args.resolution != image_size:
        raise ValueError(f"--resolution {args.resolution}: the teacher {args.model_id} makes {image_size} px images")
    noise, target, y = pairs[0]
    latent = (codec.latent_channels, unet.config.sample_size, unet.config.sample_size)
    if tuple(target.shape) != latent or pairs.xl != (unet.config.get("addition_embed_type") == "text_time"):
        raise ValueError(f"--ode_pair_path {args.ode_pair_path}: its pairs ({tuple(target.shape)} latents, "
                         f"{'SDXL' if pairs.xl else 'SD1.5'} prompts) were not made by {args.model_id}, whose latents "
                         f"are {latent}; make them with preprocessing/generate_noise_image_pairs.py")
    abar = scheduler.alphas_cumprod.double().numpy()
    generator = DiffusersEps(unet, image_size, abar).train().requires_grad_(True)
    generator.unet.enable_gradient_checkpointing()  # as DMD2's regression pretraining
    if args.ckpt_only_path:
        load_into(generator, generator_weights(args.ckpt_only_path, "--ckpt_only_path"),
                  f"--ckpt_only_path {args.ckpt_only_path}")
    steps = timesteps(args)
    teacher = DDPMTeacher(generator, abar, objective=None)
    generator.generator_sigmas = [float(s) for s in teacher.sigma(torch.tensor(steps))]
    cfg = {"model": "diffusers", "image_size": image_size, "num_classes": 0, "vae": source.name("vae"),
           "model_kwargs": {}, "sd_model": source.name("")}
    record = generator_record(args, teacher, cfg, generator.generator_sigmas)
    grid = torch.stack([pairs[i][2] for i in range(min(len(pairs), args.grid_size**2))])
    method = ODERegressionMethod(
        generator, codec, piq_lpips(), abar, timesteps=steps, denoising=args.denoising,
        lr=args.generator_lr or args.lr, max_grad_norm=args.max_grad_norm or None, warmup_step=args.warmup_step,
        processes=process.world, grid=grid, sampling_record=record, device=process.device)
    return method, TrainData(pairs, "ode-pairs", note=f"{len(pairs):,} noise-image pairs ({args.ode_pair_path})")


def main(args: argparse.Namespace) -> None:
    from methods.dmd2_weights import export_dmd2_folder

    validate(args)
    fit(partial(build_method, args), RunSpec(
        results_dir=args.output_path, results_flag="--output_path", exp_name=args.exp_name,
        run_name=lambda method: "ODE-pretraining", record=vars(args), max_steps=args.train_iters,
        steps_flag="--train_iters", batch_size=args.ode_batch_size, per_process_batch=True,
        batch_flag="--ode_batch_size", seed=args.seed, num_workers=args.num_workers,
        mixed_precision="bf16" if args.use_fp16 else "no", log_every=args.wandb_iters,
        checkpoints=Checkpoints(every=args.log_iters, save=not args.no_save, copy_to=args.cache_dir or None,
                                copies_kept=args.max_checkpoint,
                                export=export_dmd2_folder if args.checkpoint_layout == "dmd2" else None),
        grids=Grids(every=args.wandb_iters, seed=args.seed, samples=args.grid_size**2, nrow=args.grid_size),
        **run_parts(args, "train_sd_ode.py", RESUME_KEYS, CKPT_KEYS)))


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
