"""Train a class-conditional DiT (Peebles & Xie, 2023) with DDPM, on images or cached latents.

  torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/imagenet/train
  accelerate launch train.py --model DiT-B/4 --data-path latents/ --mixed-precision bf16
  python train.py --dataset builtin --model DiT-Ti/4 --image-size 32 --vae none --max-steps 2000

Story: parse and validate the flags, set up the run folder, build data / VAE / model /
diffusion, then loop: sample t and noise, take an AdamW step, update the EMA, log,
checkpoint (atomically, with everything an exact resume needs).
"""

from __future__ import annotations

import argparse
import sys
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from data import build_dataset, resolve_dataset_kind
from data.latents import sample_latents as draw_cached_latents
from diffusion import create_diffusion
from models import MODEL_NAMES, create_model
from models.vae import load_vae
from training import checkpoint as ckpt_io
from training.cli import run_cli
from training.data import make_loader, random_flip
from training.ema import requires_grad, update_ema
from training.monitor import MetricsLog
from training.run import create_logger, create_run_dir, save_args
from training.setup import seed_everything, setup_accelerator
from training.throughput import mfu, peak_flops, train_flops_per_sample
from training.visual import evaluate_builtin, sample_grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-path", type=str, default=None, help="ImageNet-style folder or a latent cache")
    p.add_argument("--dataset", choices=["folder", "latents", "builtin"], default=None,
                   help="default: 'latents' if --data-path holds latents.json, else 'folder'")
    p.add_argument("--results-dir", type=str, default="results")
    p.add_argument("--model", type=str, default="DiT-XL/2", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1400)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--global-batch-size", type=int, default=256)
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--vae", type=str, default="ema", help="ema | mse | none (pixel space) | folder | hub id")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=50_000)
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-4)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--resume", type=str, default=None, help="a checkpoint file or a run folder (its newest)")
    p.add_argument("--report-to", choices=["none", "wandb", "tensorboard"], default="none")
    p.add_argument("--eval-every", type=int, default=0, help="score EMA samples every N steps and at the end "
                   "(0 = off; proxy metrics, --dataset builtin)")
    p.add_argument("--eval-samples", type=int, default=500, help="samples per evaluation, spread over the classes")
    p.add_argument("--eval-sampling-steps", type=int, default=250, help="DDPM steps for evaluation samples")
    p.add_argument("--eval-cfg-scale", type=float, default=1.0)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before any process group or model exists, with one line each."""
    if args.model not in MODEL_NAMES:
        raise ValueError(f"unknown --model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if args.image_size % 8 != 0:
        raise ValueError(f"--image-size {args.image_size} is not divisible by 8 (the VAE downsamples by 8)")
    for name in ("global_batch_size", "log_every", "ckpt_every", "epochs", "num_classes"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.max_steps is not None and args.max_steps <= 0:
        raise ValueError("--max-steps must be positive")
    if args.eval_every < 0 or args.eval_samples <= 0 or args.eval_sampling_steps <= 0:
        raise ValueError("--eval-every must be >= 0, --eval-samples and --eval-sampling-steps positive")
    if args.eval_every and args.dataset != "builtin":
        raise ValueError("--eval-every scores with the built-in dataset's proxy classifier: use --dataset builtin "
                         "(Inception scores for other data come from sample_ddp.py and evaluations/)")


def main(args: argparse.Namespace) -> None:
    validate(args)
    kind = resolve_dataset_kind(args.dataset, args.data_path)
    resume_path = ckpt_io.resolve_resume(args.resume) if args.resume else None
    resume = ckpt_io.load_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        check_resume_args(resume, args)
    dataset = build_dataset(kind, args.data_path, args.image_size, args.num_classes)
    if kind == "latents" and args.vae != dataset.vae:
        raise ValueError(f"the latent cache was encoded with --vae {dataset.vae}, not {args.vae}; "
                         f"pass --vae {dataset.vae} (its decoder draws the sample grids)")
    max_label = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", [])) or 0
    if max_label > args.num_classes:
        raise ValueError(f"the data has {max_label} classes but --num-classes is {args.num_classes}")

    accelerator = setup_accelerator(args.mixed_precision, args.report_to)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if args.global_batch_size % world != 0:
        raise ValueError(f"--global-batch-size {args.global_batch_size} is not divisible by {world} processes")
    local_batch = args.global_batch_size // world
    seed_everything(args.global_seed * world + rank)  # DiT: a distinct stream per rank

    # Run folder (rank 0 creates; resume continues in the checkpoint's folder).
    is_main = accelerator.is_main_process
    run_dir = None
    if resume_path is not None:
        run_dir = resume_path.parent.parent
    elif is_main:
        run_dir = create_run_dir(args.results_dir, args.model)
    run_dir = Path(gather_object([str(run_dir) if is_main else ""])[0])
    logger = create_logger(run_dir, is_main)
    if is_main:
        save_args(run_dir, args)
    logger.info(f"run folder {run_dir}; {world} process(es) on {device}; data: {kind} ({len(dataset):,} items)")
    if args.report_to != "none":
        accelerator.init_trackers(run_dir.name, config={k: str(v) for k, v in vars(args).items()})

    # Codec, model, diffusion.
    codec = load_vae(args.vae, device)  # with cached latents: only to decode the sample grids
    channels, latent_size = codec.latent_channels, args.image_size // codec.downsample
    if kind == "latents":
        channels, latent_size = dataset.latent_shape[0], dataset.latent_shape[-1]
    model = create_model(args.model, input_size=latent_size, num_classes=args.num_classes, in_channels=channels)
    ema = deepcopy(model).to(device)
    requires_grad(ema, False)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0, fused=device.type == "cuda")
    steps, data_state = 0, {"epoch": 0, "position": 0}
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["opt"])
        steps, data_state = resume["steps"], resume["data"]
    else:
        update_ema(ema, model, decay=0)
    flops = train_flops_per_sample(model.eval().to(device),
                                   torch.zeros(1, channels, latent_size, latent_size, device=device),
                                   torch.zeros(1, device=device, dtype=torch.long),
                                   torch.zeros(1, device=device, dtype=torch.long))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"{args.model}: {n_params:,} parameters, input {channels}x{latent_size}x{latent_size}")
    model, opt = accelerator.prepare(model.to(device), opt)
    if resume is not None and accelerator.scaler is not None and "scaler" in resume:
        accelerator.scaler.load_state_dict(resume["scaler"])
    if resume is not None:
        restore_rng(resume, rank, world, logger)
    ema.eval()
    model.train()

    loader, sampler = make_loader(dataset, local_batch, world, rank, args.global_seed, args.num_workers)
    steps_per_epoch = len(sampler) // local_batch
    total = min(args.max_steps or sys.maxsize, args.epochs * steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {local_batch} per process")
    peak = peak_flops(device, args.mixed_precision)
    metrics = MetricsLog(run_dir, resume_step=steps) if is_main else None
    grid_noise = torch.randn(16, channels, latent_size, latent_size,
                             generator=torch.Generator().manual_seed(args.global_seed)).to(device)
    grid_labels = (torch.arange(16) * max(1, args.num_classes // 16) % args.num_classes).to(device)

    def checkpoint() -> Path:
        rngs = gather_object([ckpt_io.rng_state()])
        path = run_dir / "checkpoints" / f"{steps:07d}.pt"
        if is_main:
            state = {"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict(), "args": vars(args), "steps": steps, "rng": rngs,
                     "data": dict(data_state)}
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            ckpt_io.save_atomic(state, path)
            sample_grid(ema, codec, grid_noise, grid_labels, args.num_classes,
                        run_dir / "samples" / f"{steps:07d}.png")
            logger.info(f"saved checkpoint {path}")
        accelerator.wait_for_everyone()
        return path

    def evaluate() -> None:
        if is_main:
            result = evaluate_builtin(ema, codec, channels, latent_size, args.num_classes, device, run_dir,
                                      steps, args.eval_samples, args.eval_cfg_scale, args.eval_sampling_steps)
            logger.info(f"step {steps}: proxy metrics of {args.eval_samples} EMA samples: {format_record(result)}")
            accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=steps)
        accelerator.wait_for_everyone()

    logger.info(f"training for {total:,} steps ({steps_per_epoch:,} per epoch), global batch "
                f"{args.global_batch_size}, from step {steps}")
    bar = progress_bar(total, steps, is_main)
    running_loss, log_steps, last_good, t0 = 0.0, 0, latest_or_none(run_dir, steps), time.time()
    try:
        for x, y in epochs_of(loader, sampler, data_state):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                if kind == "latents":
                    x = draw_cached_latents(x, torch.rand(x.shape[0]) < 0.5, dataset.scale)
                else:
                    x = codec.encode(random_flip(x)[0])
            t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=device)
            with accelerator.autocast():
                loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            update_ema(ema, accelerator.unwrap_model(model), args.ema_decay)
            steps += 1
            data_state["position"] += local_batch
            bar.update(1)

            step_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
            if not np.isfinite(step_loss):
                raise NonFiniteLoss(steps, step_loss, last_good)
            running_loss += step_loss
            log_steps += 1
            if steps % args.log_every == 0 or steps == total:
                dt = time.time() - t0
                rec = {"step": steps, "loss": running_loss / log_steps, "steps_per_sec": log_steps / dt,
                       "images_per_sec": log_steps * args.global_batch_size / dt,
                       "epoch": data_state["epoch"], "lr": opt.param_groups[0]["lr"]}
                rec["mfu"] = mfu(rec["images_per_sec"], flops, peak, world)
                logger.info(format_record(rec))
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if is_main:
                    metrics.log(rec)
                    metrics.plot()
                accelerator.log({k: v for k, v in rec.items() if v is not None}, step=steps)
                running_loss, log_steps, t0 = 0.0, 0, time.time()
            if steps % args.ckpt_every == 0 or steps == total:
                last_good = checkpoint()
            if args.eval_every and (steps % args.eval_every == 0 or steps == total):
                evaluate()
            if steps >= total:
                break
    finally:
        bar.close()
    logger.info(f"done after {steps:,} steps; checkpoints in {run_dir / 'checkpoints'}")
    accelerator.end_training()


def epochs_of(loader, sampler, data_state: dict):
    """Batches across epochs from ``data_state`` (epoch, samples consumed this epoch) on.

    The caller advances ``position`` after each step; an epoch ends when the loader is
    exhausted, so a checkpoint taken at an epoch's last step resumes into the next epoch.
    """
    while True:
        sampler.set_epoch(data_state["epoch"])
        sampler.start = data_state["position"]
        yield from loader
        data_state.update(epoch=data_state["epoch"] + 1, position=0)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, last_good: Path | None):
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        super().__init__(f"loss became {value} at step {step}; training stopped and nothing was saved after it; "
                         f"{where} (resume with --resume, lower --lr or use --mixed-precision bf16)")


def check_resume_args(resume: dict, args: argparse.Namespace) -> None:
    """Resuming is re-running the same command: the settings that shape the run must match."""
    old = resume.get("args", {})
    for key in ("model", "image_size", "num_classes", "vae", "global_batch_size", "global_seed"):
        if key in old and old[key] != getattr(args, key):
            raise ValueError(f"--resume: the checkpoint was trained with --{key.replace('_', '-')} {old[key]}, "
                             f"not {getattr(args, key)}; pass the same flags as the original run")


def restore_rng(resume: dict, rank: int, world: int, logger) -> None:
    rngs = resume.get("rng") or []
    if len(rngs) == world:
        ckpt_io.set_rng_state(rngs[rank])
    else:
        logger.info(f"checkpoint has RNG state for {len(rngs)} processes, not {world}: "
                    "continuing with fresh random streams (not bit-exact)")


def latest_or_none(run_dir: Path, steps: int) -> Path | None:
    return ckpt_io.latest_checkpoint(run_dir) if steps > 0 else None


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 30)


def format_record(rec: dict) -> str:
    parts = []
    for k, v in rec.items():
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
