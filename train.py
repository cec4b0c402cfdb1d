"""Train a class-conditional DiT or U-Net (DDPM) or SiT / REPA / REG (interpolant) model, on images or latents.

  torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/imagenet/train
  accelerate launch --multi_gpu --num_processes 8 train.py --model SiT-XL/2 --enc-type dinov2-vit-b \
      --encoder-depth 8 --proj-coeff 0.5 --cls 0.03 --batch-size 256 --data-dir data/ --exp-name reg
  python train.py --dataset builtin --model DiT-Ti/4 --image-size 32 --vae none --max-steps 2000
  python train.py --model UNet --dataset cifar10 --image-size 128 --vae none      # the CIFAR-10 U-Net
  python train.py --model UNet --dataset cifar10 --vae none --overfit --samples 1  # one image per class

The families share the loop; each keeps its original's flags and defaults. SiT models take
REPA/REG's flags (``--proj-coeff 0 --cls 0`` is plain SiT, ``--cls 0`` is REPA), the U-Net its
shape flags and the cosine schedule; flags that only one family has are refused for the others.

Story: parse and validate the flags, set up the run folder, build data / VAE / encoders / model /
objective, then loop: draw the loss terms, take an AdamW step, update the EMA, log, checkpoint
(atomically, with everything an exact resume needs).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from data import build_dataset, class_names, resolve_dataset_kind
from data.latents import sample_latents as draw_cached_latents
from diffusion import NOISE_SCHEDULES
from diffusion.pipeline import diffusion_for
from loss.denoising import DDPMObjective, InterpolantObjective
from models import MODEL_NAMES, create_model
from models.encoders import load_encoders
from models.vae import load_vae
from training import checkpoint as ckpt_io
from training.alignment import check_token_counts, encoder_targets
from training.cli import check_writable_dir, first_paragraph, run_cli
from training.data import make_loader, overfit_subset, random_flip
from training.ema import requires_grad, update_ema
from training.monitor import MetricsLog
from training.overfit import overfit_report
from training.run import checkpoint_dir, create_logger, plan_run_folder, save_args, summary
from training.schedule import LR_SCHEDULES, lr_at
from training.setup import prepare_tracker, seed_everything, setup_accelerator
from training.throughput import mfu, peak_flops, train_flops_per_sample
from training.visual import InceptionCurve, evaluate_builtin, grid_labels, sample_grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--data-path", "--data-dir", dest="data_path", type=str, default=None,
                   help="ImageNet-style folder, a latent cache, or REPA/REG's layout (imagenet_256_vae/ + vae-sd/)")
    p.add_argument("--dataset", choices=["folder", "latents", "repa", "builtin", "cifar10"], default=None,
                   help="default: from what --data-path holds; cifar10 reads (or downloads into) --data-path, "
                   "default datasets/cifar10")
    p.add_argument("--results-dir", "--output-dir", dest="results_dir", type=str, default="results")
    p.add_argument("--exp-name", type=str, default=None,
                   help="run folder {results-dir}/{exp-name} (REPA) instead of a numbered one (DiT)")
    p.add_argument("--model", type=str, default="DiT-XL/2", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--image-size", "--resolution", dest="image_size", type=int, default=None,
                   help="default 256 (DiT, SiT), 128 (U-Net)")
    p.add_argument("--num-classes", type=int, default=None, help="default 1000 (ImageNet), 10 (U-Net: CIFAR-10)")
    p.add_argument("--epochs", type=int, default=1400)
    p.add_argument("--max-steps", "--max-train-steps", dest="max_steps", type=int, default=None,
                   help="stop after this many optimizer steps")
    p.add_argument("--global-batch-size", "--batch-size", dest="global_batch_size", type=int, default=256)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step; the global batch is split over processes and these")
    p.add_argument("--global-seed", "--seed", dest="global_seed", type=int, default=0)
    p.add_argument("--vae", type=str, default=None, help="ema | mse | none (pixel space) | folder | hub id "
                   "(default ema; none for the U-Net)")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--ckpt-every", "--checkpointing-steps", dest="ckpt_every", type=int, default=50_000)
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-4)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="after the warm-up: constant (DiT, REPA), or linear / cosine decay to --min-lr at the last step")
    p.add_argument("--lr-warmup-steps", type=int, default=0, help="linear warm-up of the learning rate")
    p.add_argument("--min-lr", type=float, default=0.0, help="final learning rate of the linear / cosine decay")
    p.add_argument("--overfit", action="store_true", help="train on --samples images per class only; "
                   "checkpoints go to checkpoints_overfit/ and the run ends with an overfit report")
    p.add_argument("--samples", type=int, default=1, help="images per class with --overfit")
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.999)
    p.add_argument("--adam-weight-decay", type=float, default=0.0, help="AdamW weight decay (0 in DiT and REPA)")
    p.add_argument("--adam-epsilon", type=float, default=1e-8)
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="gradient clipping (default: none for DiT, 1.0 for SiT, as the originals)")
    p.add_argument("--cfg-prob", type=float, default=0.1, help="label dropout for classifier-free guidance")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--allow-tf32", action="store_true", help="TF32 matmuls for SiT (DiT's train.py always has them)")
    p.add_argument("--resume", type=str, default=None, help="a checkpoint file or a run folder (its newest)")
    p.add_argument("--resume-step", type=int, default=0, help="resume {results-dir}/{exp-name}/checkpoints/"
                   "{step:07d}.pt (REPA)")
    p.add_argument("--report-to", choices=["none", "wandb", "tensorboard"], default="none")
    p.add_argument("--eval-every", type=int, default=0, help="score EMA samples every N steps and at the end "
                   "(0 = off): proxy metrics with --dataset builtin, ADM's metrics against --eval-ref")
    p.add_argument("--eval-ref", type=str, default=None, help="reference batch or statistics for FID, sFID, IS, "
                   "precision, recall during training (evaluations/evaluator.py)")
    p.add_argument("--inception-weights", type=str, default=None, help="the ported Inception weights file")
    p.add_argument("--eval-samples", type=int, default=500, help="samples per evaluation, spread over the classes")
    p.add_argument("--eval-sampling-steps", type=int, default=250,
                   help="sampler steps for evaluation samples (DDPM for DiT, Euler-Maruyama for SiT)")
    p.add_argument("--eval-cfg-scale", type=float, default=1.0)
    dit = p.add_argument_group("DDPM models (DiT, U-Net) only")
    dit.add_argument("--noise-schedule", choices=list(NOISE_SCHEDULES), default=None,
                     help="beta schedule: linear (DiT's default) or cosine (IDDPM; the U-Net's default)")
    unet = p.add_argument_group("U-Net only (defaults: the model's, base 64, mult 1,2,2,2, embeddings 128)")
    unet.add_argument("--base-channels", type=int, default=None, help="channels at full resolution")
    unet.add_argument("--channel-mult", type=str, default=None, help="per-resolution multipliers, e.g. 1,2,2,2")
    unet.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per resolution")
    unet.add_argument("--time-emb-dim", type=int, default=None, help="time embedding size")
    unet.add_argument("--class-emb-dim", type=int, default=None, help="class embedding size")
    unet.add_argument("--dropout", type=float, default=None, help="dropout in the residual blocks (0.1)")
    sit = p.add_argument_group("SiT / REPA / REG only (defaults are REG's)")
    sit.add_argument("--enc-type", type=str, default=None, help="frozen encoder(s), e.g. dinov2-vit-b (default)")
    sit.add_argument("--encoder-depth", type=int, default=None, help="block whose tokens are aligned (REPA: 8)")
    sit.add_argument("--proj-coeff", type=float, default=None, help="projection loss weight (0.5)")
    sit.add_argument("--cls", type=float, default=None, help="REG class-token loss weight (0.03; 0 = REPA)")
    sit.add_argument("--path-type", choices=["linear", "cosine"], default=None, help="interpolant (linear)")
    sit.add_argument("--prediction", choices=["v"], default=None, help="model target (v)")
    sit.add_argument("--weighting", choices=["uniform", "lognormal"], default=None, help="time sampling (uniform)")
    sit.add_argument("--qk-norm", action="store_true", default=None, help="LayerNorm on queries and keys")
    sit.add_argument("--legacy", action="store_true", default=None,
                     help="drop labels a second time with --cfg-prob, as REPA's first runs did")
    return p.parse_args(argv)


IMAGENET = {"image_size": 256, "num_classes": 1000, "vae": "ema"}  # DiT's and REPA's data defaults
SIT_DEFAULTS = {"enc_type": "dinov2-vit-b", "proj_coeff": 0.5, "cls": 0.03, "path_type": "linear",
                "prediction": "v", "weighting": "uniform", "qk_norm": False, "legacy": False,
                "max_grad_norm": 1.0, "encoder_depth": None, **IMAGENET}
DIT_DEFAULTS = {"noise_schedule": "linear", "max_grad_norm": None, **IMAGENET}
UNET_SHAPE_FLAGS = ("base_channels", "channel_mult", "num_res_blocks", "time_emb_dim", "class_emb_dim", "dropout")
# DDPM's CIFAR-10 recipe: cosine schedule (IDDPM), gradients clipped at norm 1 (Ho et al., App. B).
# CIFAR-10 upscaled to 128 x 128 in pixel space.
UNET_DEFAULTS = {"noise_schedule": "cosine", "max_grad_norm": 1.0, **dict.fromkeys(UNET_SHAPE_FLAGS),
                 "image_size": 128, "num_classes": 10, "vae": "none"}
FAMILY_DEFAULTS = {"dit": DIT_DEFAULTS, "sit": SIT_DEFAULTS, "unet": UNET_DEFAULTS}
FAMILY_NAMES = {"dit": "DiT (DDPM)", "sit": "SiT (REPA / REG)", "unet": "U-Net (DDPM)"}


def family_of(model_name: str) -> str:
    """``sit`` for SiT-* (interpolants), ``unet`` for UNet*, ``dit`` for DiT-* (both DDPM)."""
    if model_name.startswith("SiT-"):
        return "sit"
    return "unet" if model_name.startswith("UNet") else "dit"


def is_sit(model_name: str) -> bool:
    return family_of(model_name) == "sit"


def resolve_family_flags(args: argparse.Namespace) -> None:
    """Refuse the other families' flags, then fill this family's defaults (so args.json records them)."""
    family = family_of(args.model)
    mine = FAMILY_DEFAULTS[family]
    for other, flags in FAMILY_DEFAULTS.items():
        for key in flags:
            if other != family and key not in mine and getattr(args, key) is not None:
                raise ValueError(f"--{key.replace('_', '-')} does not apply to {args.model}: {FAMILY_NAMES[family]} "
                                 f"models do not use it (it is a {FAMILY_NAMES[other]} flag)")
    for key, value in mine.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def unet_kwargs(args: argparse.Namespace) -> dict:
    """The U-Net shape flags that were given (the model's defaults fill the rest)."""
    kw = {k: getattr(args, k) for k in UNET_SHAPE_FLAGS if getattr(args, k) is not None}
    if "channel_mult" in kw:
        try:
            kw["channel_mult"] = tuple(int(m) for m in kw["channel_mult"].split(","))
        except ValueError:
            raise ValueError(f"--channel-mult {kw['channel_mult']!r} is not a comma-separated list of integers, "
                             "e.g. 1,2,2,2") from None
    return kw


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before any process group or model exists, with one line each."""
    if args.model not in MODEL_NAMES:
        raise ValueError(f"unknown --model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    resolve_family_flags(args)
    if args.image_size % 8 != 0:
        raise ValueError(f"--image-size {args.image_size} is not divisible by 8 (the VAE downsamples by 8)")
    for name in ("global_batch_size", "log_every", "ckpt_every", "epochs", "num_classes", "gradient_accumulation_steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.max_steps is not None and args.max_steps <= 0:
        raise ValueError("--max-steps must be positive")
    if args.eval_every < 0 or args.eval_samples <= 0 or args.eval_sampling_steps <= 0:
        raise ValueError("--eval-every must be >= 0, --eval-samples and --eval-sampling-steps positive")
    if not 0 <= args.cfg_prob < 1:
        raise ValueError("--cfg-prob must be in [0, 1)")
    if args.resume_step and not args.exp_name:
        raise ValueError("--resume-step needs --exp-name (the run folder {results-dir}/{exp-name}); "
                         "or pass --resume with a checkpoint file or run folder")
    if args.resume_step and args.resume:
        raise ValueError("pass either --resume or --resume-step, not both")
    if args.samples < 1 or args.lr_warmup_steps < 0 or args.min_lr < 0:
        raise ValueError("--samples must be positive, --lr-warmup-steps and --min-lr >= 0")
    if family_of(args.model) == "unet":
        unet_kwargs(args)
    if is_sit(args.model) and args.proj_coeff < 0 or is_sit(args.model) and args.cls < 0:
        raise ValueError("--proj-coeff and --cls must be >= 0")
    if args.eval_ref and not Path(args.eval_ref).exists():
        raise ValueError(f"--eval-ref {args.eval_ref} does not exist; pass an ADM reference batch or a file written "
                         "by evaluations/evaluator.py --ref-stats")


def main(args: argparse.Namespace) -> None:
    validate(args)
    sit = is_sit(args.model)
    if family_of(args.model) == "unet" and args.dataset is None and args.data_path is None:
        from data import CIFAR10_ROOT
        from data.cifar10 import default_dataset

        args.dataset = default_dataset(CIFAR10_ROOT)  # CIFAR-10 when it can be had, else the built-in images
        if args.dataset == "builtin":
            print(f"CIFAR-10 is not in {CIFAR10_ROOT} and cannot be downloaded: training on the built-in images "
                  "(--dataset cifar10 --data-path DIR to use a copy elsewhere)", file=sys.stderr)
    kind = args.dataset = resolve_dataset_kind(args.dataset, args.data_path)  # args.json records what was used
    if args.eval_every and kind != "builtin" and not args.eval_ref:
        raise ValueError("--eval-every needs something to score against: --dataset builtin (proxy metrics) or "
                         "--eval-ref REF.npz (FID, sFID, IS, precision, recall)")
    ckpt_subdir = checkpoint_dir(args.overfit)
    resume_path = resume_checkpoint_path(args, ckpt_subdir)
    resume = ckpt_io.load_training_checkpoint(resume_path) if resume_path else None
    dataset = build_dataset(kind, args.data_path, args.image_size, args.num_classes)
    if kind == "latents" and args.vae != dataset.vae:
        raise ValueError(f"the latent cache was encoded with --vae {dataset.vae}, not {args.vae}; "
                         f"pass --vae {dataset.vae} (its decoder draws the sample grids)")
    if kind == "repa" and args.vae == "none":
        raise ValueError("REPA/REG's layout holds SD-VAE latents: pass --vae ema or mse (it decodes the grids)")
    max_label = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", [])) or 0
    if max_label > args.num_classes:
        raise ValueError(f"the data has {max_label} classes but --num-classes is {args.num_classes}")
    aligned = sit and (args.proj_coeff > 0 or args.cls > 0)
    if aligned and kind == "latents":
        raise ValueError("REPA/REG align to encoder features of the images, which a latent cache does not hold: "
                         "use an image folder or REPA/REG's layout (preprocessing/dataset_tools.py)")
    names = class_names(kind, args.num_classes, dataset)
    if args.overfit:
        dataset = overfit_subset(dataset, args.samples, args.num_classes)
        if args.global_batch_size > len(dataset):  # every image in every batch
            args.global_batch_size = len(dataset)
    if resume is not None:
        check_resume_args(resume, args)
    check_writable_dir(args.results_dir, "--results-dir")

    accelerator = setup_accelerator(args.mixed_precision, args.report_to, allow_tf32=args.allow_tf32 or not sit)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    accum = args.gradient_accumulation_steps
    if args.global_batch_size % (world * accum) != 0:
        raise ValueError(f"--global-batch-size {args.global_batch_size} is not divisible by {world} process(es) x "
                         f"{accum} accumulation steps")
    local_batch = args.global_batch_size // (world * accum)  # per process and micro-batch
    seed_everything(args.global_seed * world + rank)  # DiT: a distinct stream per rank

    # Codec, encoders, model, objective, data order: everything that can fail comes before the run folder.
    codec = load_vae(args.vae, device)  # with cached latents: only to decode the sample grids
    channels, latent_size = codec.latent_channels, args.image_size // codec.downsample
    if kind == "latents":
        channels, latent_size = dataset.latent_shape[0], dataset.latent_shape[-1]
    if kind == "repa":
        channels, latent_size = dataset.moments_shape[0] // 2, dataset.moments_shape[-1]
    model_kwargs = dict(input_size=latent_size, num_classes=args.num_classes, in_channels=channels,
                        class_dropout_prob=args.cfg_prob)
    if family_of(args.model) == "unet":
        model_kwargs.update(unet_kwargs(args))
    encoders, sampling = [], {}
    if sit:
        if aligned:
            encoders = load_encoders(args.enc_type, device, args.image_size)
        z_dims = [e.embed_dim for e in encoders]
        model_kwargs.update(z_dims=z_dims, qk_norm=args.qk_norm,
                            cls_token_dim=z_dims[0] if args.cls > 0 else None)
        if args.encoder_depth is not None:
            model_kwargs["encoder_depth"] = args.encoder_depth
        objective = InterpolantObjective(args.path_type, args.weighting, args.prediction, args.proj_coeff, args.cls)
        sampling["path_type"] = args.path_type
    model = create_model(args.model, **model_kwargs)
    if not sit:
        sampling["noise_schedule"] = NOISE_SCHEDULES[args.noise_schedule]
        objective = DDPMObjective(diffusion_for(model, "", sampling["noise_schedule"]))
    if encoders:
        check_token_counts(encoders, model.x_embedder.num_patches, args.image_size, args.model)
    loader, sampler = make_loader(dataset, local_batch, world, rank, args.global_seed, args.num_workers)
    steps_per_epoch = len(sampler) // local_batch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {local_batch} per process; "
                         "lower --global-batch-size")
    total = min(args.max_steps or sys.maxsize, args.epochs * steps_per_epoch)
    steps, data_state = (resume["steps"], resume["data"]) if resume else (0, {"epoch": 0, "position": 0})
    if total <= steps:
        raise ValueError(f"nothing to do: {resume_path} is at step {steps} and this run stops at step {total} "
                         "(--max-steps, --epochs); raise --max-steps to train further")
    run_folder = plan_run_folder(args.results_dir, args.model, args.exp_name, resume_path, steps, ckpt_subdir)
    tracker_note = prepare_tracker(args.report_to)

    # Only now is anything written: a new run folder, or the resumed run's own (its newest checkpoint).
    run_dir, note = run_folder.open(ckpt_subdir) if is_main else (None, None)
    run_dir = Path(gather_object([str(run_dir) if is_main else ""])[0])
    logger = create_logger(run_dir, is_main)
    if is_main:
        save_args(run_dir, args)
    logger.info(f"run folder {run_dir}; {world} process(es) on {device}; data: {kind} ({len(dataset):,} items)")
    for line in (note, tracker_note):
        if line:
            logger.info(line)
    if args.report_to != "none":
        accelerator.project_configuration.project_dir = accelerator.project_configuration.logging_dir = str(run_dir)
        accelerator.init_trackers(args.exp_name or run_dir.name, config={k: str(v) for k, v in vars(args).items()},
                                  init_kwargs={"wandb": {"dir": str(run_dir)}})

    ema = deepcopy(model).to(device)
    requires_grad(ema, False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=device.type == "cuda")
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["opt"])
    else:
        update_ema(ema, model, decay=0)
    flops = train_flops_per_sample(model.eval().to(device), *example_inputs(model, channels, latent_size, device))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"{args.model}: {n_params:,} parameters, input {channels}x{latent_size}x{latent_size}"
                + (f"; aligned to {args.enc_type} after block {model.encoder_depth}" if encoders else ""))
    model, opt = accelerator.prepare(model.to(device), opt)
    if resume is not None and accelerator.scaler is not None and "scaler" in resume:
        accelerator.scaler.load_state_dict(resume["scaler"])
    if resume is not None:
        restore_rng(resume, rank, world, logger)
    ema.eval()
    model.train()

    peak = peak_flops(device, args.mixed_precision)
    metrics = MetricsLog(run_dir) if is_main else None
    grid_y, grid_nrow = grid_labels(args.num_classes)
    grid_noise = torch.randn(len(grid_y), channels, latent_size, latent_size,
                             generator=torch.Generator().manual_seed(args.global_seed)).to(device)
    grid_y = grid_y.to(device)

    def checkpoint() -> Path:
        rngs = gather_object([ckpt_io.rng_state()])
        path = run_dir / ckpt_subdir / f"{steps:07d}.pt"
        if is_main:
            state = {"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict(), "args": vars(args), "steps": steps, "rng": rngs,
                     "data": dict(data_state), "model_kwargs": model_kwargs}
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            ckpt_io.save_atomic(state, path)
            sample_grid(ema, codec, grid_noise, grid_y, args.num_classes,
                        run_dir / "samples" / f"{steps:07d}.png", nrow=grid_nrow, names=names, **sampling)
            logger.info(f"saved checkpoint {path}")
        accelerator.wait_for_everyone()
        return path

    inception_curve = InceptionCurve(args.eval_ref, device, args.inception_weights) if args.eval_ref else None

    def evaluate() -> None:
        if inception_curve is not None:
            result = inception_curve(ema, codec, channels, latent_size, args.num_classes, run_dir, steps,
                                     args.eval_samples, args.eval_cfg_scale, args.eval_sampling_steps, rank, world,
                                     **sampling)
            logger.info(f"step {steps}: ADM metrics of {args.eval_samples} EMA samples: {format_record(result)}")
            accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=steps)
        if is_main and kind == "builtin":
            result = evaluate_builtin(ema, codec, channels, latent_size, args.num_classes, device, run_dir,
                                      steps, args.eval_samples, args.eval_cfg_scale, args.eval_sampling_steps,
                                      **sampling)
            logger.info(f"step {steps}: proxy metrics of {args.eval_samples} EMA samples: {format_record(result)}")
            accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=steps)
        accelerator.wait_for_everyone()

    logger.info(f"training for {total:,} steps ({steps_per_epoch:,} per epoch), global batch "
                f"{args.global_batch_size}, from step {steps}")
    bar = progress_bar(total, steps, is_main)
    running, log_steps, last_good, t0 = {}, 0, resume_path, time.time()
    micro, micro_sum = 0, {}  # micro-batches of this optimizer step (--gradient-accumulation-steps)
    try:
        for batch in epochs_of(loader, sampler, data_state):
            raw, x, y = prepare_batch(batch, kind, codec, dataset, device, with_raw=bool(encoders))
            extra = {}
            if encoders:
                extra["zs"], cls_token = encoder_targets(encoders, raw, reg=args.cls > 0)
                if cls_token is not None:
                    extra["cls_token"] = cls_token
            if sit and args.legacy:  # REPA's first runs dropped labels here and again in the model
                y = torch.where(torch.rand(y.shape[0], device=y.device) < args.cfg_prob, args.num_classes, y)
            micro += 1
            data_state["position"] += local_batch
            with nullcontext() if micro == accum else accelerator.no_sync(model):  # all-reduce once per step
                with accelerator.autocast():
                    losses = objective(model, x, y, **extra)
                accelerator.backward(losses["loss"] / accum)  # the mean over the global batch, as one step
            for k, v in losses.items():
                micro_sum[k] = micro_sum.get(k, 0.0) + v.detach().float() / accum
            if micro < accum:
                continue
            losses, micro_sum, micro = micro_sum, {}, 0
            if args.max_grad_norm is not None:
                losses["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            for group in opt.param_groups:
                group["lr"] = lr_at(steps, args.lr, args.lr_schedule, args.lr_warmup_steps, total, args.min_lr)
            opt.step()
            opt.zero_grad(set_to_none=True)
            update_ema(ema, accelerator.unwrap_model(model), args.ema_decay)
            steps += 1
            bar.update(1)

            step_losses = {k: accelerator.reduce(v.detach().float(), reduction="mean").item()
                           for k, v in losses.items()}
            if not np.isfinite(step_losses["loss"]):
                raise NonFiniteLoss(steps, step_losses["loss"], last_good)
            for k, v in step_losses.items():
                running[k] = running.get(k, 0.0) + v
            log_steps += 1
            if steps % args.log_every == 0 or steps == total:
                dt = time.time() - t0
                rec = {"step": steps, **{k: v / log_steps for k, v in running.items()},
                       "steps_per_sec": log_steps / dt, "images_per_sec": log_steps * args.global_batch_size / dt,
                       "epoch": data_state["epoch"], "lr": opt.param_groups[0]["lr"]}
                rec["mfu"] = mfu(rec["images_per_sec"], flops, peak, world)
                logger.info(format_record(rec))
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if is_main:
                    metrics.log(rec)
                    metrics.plot()
                accelerator.log({k: v for k, v in rec.items() if v is not None}, step=steps)
                running, log_steps, t0 = {}, 0, time.time()
            if steps % args.ckpt_every == 0 or steps == total:
                last_good = checkpoint()
            if args.eval_every and (steps % args.eval_every == 0 or steps == total):
                evaluate()
            if steps >= total:
                break
    finally:
        bar.close()
    if args.overfit and is_main:
        report = overfit_report(ema, codec, dataset, args.num_classes, run_dir, steps, args.eval_cfg_scale,
                                args.eval_sampling_steps, builtin=kind == "builtin", names=names, **sampling)
        logger.info(f"overfit report (EMA samples vs their training images): {format_record(report)}")
    for line in summary(run_dir, steps, args.num_classes) if is_main else []:
        logger.info(line)
    accelerator.end_training()


def prepare_batch(batch, kind: str, codec, dataset, device, with_raw: bool):
    """``(raw, x, y)``: clean images in [0, 255] for the encoders (None without ``with_raw``), the
    model input (latents, or pixels in [-1, 1] with ``--vae none``) and labels.

    Images get DiT's random flip (the same flip for the encoder's view); cached latents pick their
    flipped or unflipped moments; REPA's layout is used as stored (no flip), as REPA does.
    """
    if kind == "repa":
        raw, moments, y = (t.to(device, non_blocking=True) for t in batch)
        mean, std = moments.chunk(2, dim=1)
        return raw.float(), (mean + std * torch.randn_like(mean)) * codec.scale, y
    x, y = (t.to(device, non_blocking=True) for t in batch)
    with torch.no_grad():
        if kind == "latents":
            return None, draw_cached_latents(x, torch.rand(x.shape[0]) < 0.5, dataset.scale), y
        x = random_flip(x)[0]
        return (x + 1) * 127.5 if with_raw else None, codec.encode(x), y


def example_inputs(model, channels: int, latent_size: int, device) -> tuple:
    """One input of each kind the model takes, for the FLOP count."""
    inputs = (torch.zeros(1, channels, latent_size, latent_size, device=device),
              torch.zeros(1, device=device), torch.zeros(1, device=device, dtype=torch.long))
    cls_dim = getattr(model, "cls_token_dim", None)
    return inputs + ((torch.zeros(1, cls_dim, device=device),) if cls_dim else ())


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
        if last_good:
            advice = f"the last good checkpoint is {last_good} (resume it with --resume and a lower --lr, or use " \
                     "--mixed-precision bf16)"
        else:
            advice = "no checkpoint was written yet: start again with a lower --lr or --mixed-precision bf16"
        super().__init__(f"loss became {value} at step {step}; training stopped and nothing was saved after it; "
                         f"{advice}")


def resume_checkpoint_path(args: argparse.Namespace, ckpt_subdir: str) -> Path | None:
    """The checkpoint to resume: ``--resume`` (a file, or a run folder's newest) or REPA's ``--resume-step``
    in ``{results-dir}/{exp-name}``; None for a fresh run."""
    if args.resume_step:
        args.resume = str(Path(args.results_dir) / args.exp_name / ckpt_subdir / f"{args.resume_step:07d}.pt")
    return ckpt_io.resolve_resume(args.resume, ckpt_subdir) if args.resume else None


def check_resume_args(resume: dict, args: argparse.Namespace) -> None:
    """Resuming is re-running the same command: the settings that shape the run must match."""
    old = resume.get("args", {})
    for key in ("model", "image_size", "num_classes", "vae", "global_batch_size", "global_seed", "enc_type",
                "encoder_depth", "proj_coeff", "cls", "path_type", "weighting", "noise_schedule", "cfg_prob"):
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
