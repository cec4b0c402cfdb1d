"""The flags of ``train_repae.py`` and ``train_ldm_only.py`` (REPA-E's, with their spelling and defaults),
their checks, the data and the methods they build (``methods/repae.py``, ``methods/denoising.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common.cli import require_positive
from imagedata.h5 import CONVERT
from methods.denoising_cli import optimizer_flags
from models import MODEL_NAMES

REPAE_DATASETS = ("h5", "builtin", "folder")


def parse_args(argv=None, description: str | None = None, ldm_only: bool = False) -> argparse.Namespace:
    """``ldm_only``: ``train_ldm_only.py``'s flags (no VAE, discriminator or VAE-loss flags; its defaults)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output-dir", dest="results_dir", type=str, default="exps")
    p.add_argument("--exp-name", type=str, required=True, help="the run folder {output-dir}/{exp-name}")
    p.add_argument("--logging-dir", type=str, default="logs", help="the trackers' folder inside the run folder")
    p.add_argument("--report-to", choices=["none", "wandb", "tensorboard"], default="wandb")
    p.add_argument("--sampling-steps", type=int, default=10_000, help="a grid of EMA samples every N steps")
    p.add_argument("--resume-step", type=int, default=0, help="resume {exp dir}/checkpoints/{step:07d}.pt")
    p.add_argument("--continue-train-exp-dir", type=str, default=None,
                   help="the run folder to resume from (default {output-dir}/{exp-name})")
    p.add_argument("--model", type=str, default="SiT-XL/1" if ldm_only else "SiT-XL/2")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--encoder-depth", type=int, default=8)
    p.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--fused-attn", action=argparse.BooleanOptionalAction, default=True,
                   help="attention is always torch's scaled_dot_product_attention (--no-fused-attn is refused)")
    if not ldm_only:
        p.add_argument("--bn-momentum", type=float, default=0.1, help="momentum of the SiT's latent BatchNorm")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the SiT (--no-compile on CPUs and for debugging)")
    p.add_argument("--data-dir", dest="data_path", type=str, default="data",
                   help="REPA-E's layout: images.h5" + (" and {vae-latents-name}.h5" if ldm_only else
                                                        " (or an ImageNet-style image folder)"))
    if not ldm_only:
        p.add_argument("--dataset", choices=REPAE_DATASETS, default=None,
                       help="default: h5 when --data-dir holds images.h5, else folder")
    p.add_argument("--resolution", dest="image_size", type=int, default=256)
    p.add_argument("--batch-size", dest="global_batch_size", type=int, default=256)
    p.add_argument("--allow-tf32", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="fp16")
    p.add_argument("--epochs", type=int, default=1400)
    p.add_argument("--max-train-steps", dest="max_steps", type=int, default=400_000)
    p.add_argument("--checkpointing-steps", dest="ckpt_every", type=int, default=50_000)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", dest="lr", type=float, default=1e-4, help="the SiT's")
    if not ldm_only:
        p.add_argument("--vae-learning-rate", type=float, default=1e-4)
        p.add_argument("--disc-learning-rate", type=float, default=1e-4)
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.999)
    p.add_argument("--adam-weight-decay", type=float, default=0.0)
    p.add_argument("--adam-epsilon", type=float, default=1e-8)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", dest="global_seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--path-type", choices=["linear", "cosine"], default="linear")
    p.add_argument("--prediction", choices=["v"], default="v")
    p.add_argument("--cfg-prob", type=float, default=0.1)
    p.add_argument("--enc-type", type=str, default="dinov2-vit-b")
    p.add_argument("--proj-coeff", type=float, default=0.5)
    p.add_argument("--weighting", choices=["uniform", "lognormal"], default="uniform")
    p.add_argument("--vae", choices=["f8d4", "f16d32", "tiny-f4d4"], default="f16d32" if ldm_only else "f8d4")
    p.add_argument("--vae-ckpt", type=str, default="pretrained/e2e-vavae-400k/e2e-vavae-400k.pt" if ldm_only else
                   "pretrained/sdvae-f8d4/sdvae-f8d4.pt", help="its latent statistics are read from "
                   "<vae-ckpt>-latents-stats.pt" + ("; it decodes the sample grids" if ldm_only else ""))
    if ldm_only:
        p.add_argument("--vae-latents-name", type=str, default="e2e-vavae-400k",
                       help="the cached latents {data-dir}/{name}.h5 (cache_latents.py)")
    else:
        p.add_argument("--disc-pretrained-ckpt", type=str, default=None)
        p.add_argument("--loss-cfg-path", type=str, default="configs/l1_lpips_kl_gan.yaml")
        p.add_argument("--vae-align-proj-coeff", type=float, default=1.5)
    ours = p.add_argument_group("beyond REPA-E's flags")
    ours.add_argument("--ema-decay", type=float, default=0.9999)
    ours.add_argument("--log-every", type=int, default=100)
    if not ldm_only:
        ours.add_argument("--lpips-vgg", type=str, default=None, help="torchvision's vgg16-397923af.pth for LPIPS")
        ours.add_argument("--lpips-random", action="store_true", help="LPIPS on a random VGG (tests, the CPU "
                          "demo): the mechanics of the loss without its perceptual meaning")
    ours.add_argument("--eval-every", type=int, default=0, help="proxy metrics of EMA samples (--dataset builtin)")
    ours.add_argument("--eval-samples", type=int, default=500)
    ours.add_argument("--eval-sampling-steps", type=int, default=50)
    ours.add_argument("--eval-cfg-scale", type=float, default=1.0)
    return p.parse_args(argv)


# REPA-E's spelling of the flags whose destination has another name
FLAGS = {"global_batch_size": "--batch-size", "ckpt_every": "--checkpointing-steps", "max_steps": "--max-train-steps"}


def flag_of(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


# Resuming is re-running the same command: the settings that shape the run must match.
LDM_RESUME_KEYS = ("model", "vae", "image_size", "num_classes", "global_batch_size", "global_seed", "enc_type",
                   "encoder_depth", "proj_coeff", "path_type", "weighting", "cfg_prob")


def run_spec(args: argparse.Namespace, resume_keys: tuple[str, ...], convert=None):
    """The run as REPA-E's flags describe it (``train_repae.py`` and ``train_ldm_only.py``)."""
    from training.fit import Checkpoints, Evaluation, Grids, Resume, RunSpec, Trackers

    return RunSpec(
        results_dir=args.results_dir, results_flag="--output-dir", run_name=args.model, exp_name=args.exp_name,
        record=vars(args), max_steps=args.max_steps, epochs=args.epochs, steps_flag="--max-train-steps",
        batch_size=args.global_batch_size, batch_flag="--batch-size", grad_accum=args.gradient_accumulation_steps,
        seed=args.global_seed, num_workers=args.num_workers, mixed_precision=args.mixed_precision,
        allow_tf32=args.allow_tf32, compile=("model",) if args.compile else (), log_every=args.log_every,
        checkpoints=Checkpoints(every=args.ckpt_every), grids=Grids(every=args.sampling_steps, seed=args.global_seed),
        evaluation=Evaluation(args.eval_every, args.eval_samples, args.eval_sampling_steps, args.eval_cfg_scale),
        resume=Resume(resume_path(args), resume_keys, "--resume-step", script="train_repae.py", convert=convert),
        trackers=Trackers(args.report_to, args.logging_dir))


def resume_path(args: argparse.Namespace) -> Path | None:
    """REPA-E's ``--resume-step``: ``{continue-train-exp-dir or output-dir/exp-name}/checkpoints/{step:07d}.pt``."""
    if not args.resume_step:
        return None
    return Path(args.continue_train_exp_dir or Path(args.results_dir) / args.exp_name) / "checkpoints" / \
        f"{args.resume_step:07d}.pt"


def validate(args: argparse.Namespace, ldm_only: bool = False) -> None:
    """One line for each flag that cannot work, before anything is loaded or written."""
    if not args.model.startswith("SiT-") or args.model not in MODEL_NAMES:
        raise ValueError(f"--model {args.model}: REPA-E trains a SiT; one of "
                         f"{', '.join(m for m in MODEL_NAMES if m.startswith('SiT-'))}")
    if not args.fused_attn:
        raise ValueError("--no-fused-attn: attention always runs torch's scaled_dot_product_attention here")
    require_positive(args, "global_batch_size", "ckpt_every", "sampling_steps", "max_steps", "epochs", "log_every",
                     "gradient_accumulation_steps", "num_classes", flag=flag_of)
    if args.proj_coeff < 0 or not ldm_only and args.vae_align_proj_coeff < 0:
        raise ValueError("--proj-coeff and --vae-align-proj-coeff must be >= 0")
    if not ldm_only and args.dataset is None:
        args.dataset = "h5" if (Path(args.data_path or ".") / "images.h5").is_file() else "folder"
    kind = "h5-latents" if ldm_only else args.dataset
    if kind in ("h5", "h5-latents") and not (Path(args.data_path or ".") / "images.h5").is_file():
        raise ValueError(f"--data-dir {args.data_path}: no images.h5 (REPA-E's layout); write it: {CONVERT} --dest "
                         f"{Path(args.data_path or '.') / 'images.h5'}")
    if kind == "folder" and not (args.data_path and Path(args.data_path).is_dir()):
        raise ValueError(f"--data-dir {args.data_path}: neither images.h5 nor a folder of class sub-folders of "
                         "images (or pass --dataset builtin)")
    if args.eval_every and kind != "builtin":
        raise ValueError("--eval-every scores proxy metrics, which exist for --dataset builtin only")
    if args.continue_train_exp_dir and not args.resume_step:
        raise ValueError("--continue-train-exp-dir needs --resume-step, the checkpoint's step")
    if args.resume_step and not resume_path(args).is_file():
        raise ValueError(f"--resume-step {args.resume_step}: {resume_path(args)} does not exist")


def open_dataset(args: argparse.Namespace, ldm_only: bool = False):
    """``(kind, dataset)``: REPA-E's h5 layout (``train_ldm_only.py``: with the cached latents), the built-in
    images or an image folder, checked against the flags."""
    from imagedata import build_dataset

    kind = "h5-latents" if ldm_only else args.dataset
    return kind, build_dataset(kind, args.data_path, args.image_size, args.num_classes, size_flag="--resolution",
                               latents_name=args.vae_latents_name if ldm_only else None)


def check_latents_vae(dataset, vae_ckpt: str) -> None:
    """The cached latents are ``--vae-ckpt``'s, when their file records its VAE (``cache_latents.py`` does)."""
    from models.weights import sha256_of

    recorded = dataset.vae_identity.get("vae_ckpt_sha256")
    if recorded and recorded != sha256_of(vae_ckpt):
        raise ValueError(f"{dataset.latents_path} holds latents of another VAE than --vae-ckpt {vae_ckpt} (sha256 "
                         f"{recorded[:12]}...); pass the VAE they were cached with, or cache them with this one")


def build_sit(args: argparse.Namespace, device, bn_momentum: float, align_vae: bool = False):
    """``(vae, sit, encoders, model_kwargs)``: the VAE (weights and latent statistics from --vae-ckpt), the frozen
    encoders (for the SiT's projection loss, or ``align_vae``: the VAE's) and the SiT, its latent BatchNorm at
    the VAE's latent statistics."""
    from methods.alignment import check_token_counts
    from methods.repae import load_latents_stats
    from models import create_model
    from models.encoders import load_encoders
    from models.vae import VAE_models, load_vae_weights

    vae = VAE_models[args.vae]()
    load_vae_weights(vae, args.vae_ckpt)
    stats = load_latents_stats(args.vae_ckpt)
    if args.image_size % vae.downsample:
        raise ValueError(f"--resolution {args.image_size} is not a multiple of the VAE's downsampling {vae.downsample}")
    if stats["latents_scale"].numel() != vae.latent_channels:
        raise ValueError(f"{args.vae_ckpt}: its latent statistics have {stats['latents_scale'].numel()} channels, "
                         f"the {args.vae} VAE {vae.latent_channels}")
    if args.proj_coeff > 0 or align_vae:
        from methods.ssl_encoder import ensure

        ensure(args.enc_type)
    encoders = load_encoders(args.enc_type, device, args.image_size) if args.proj_coeff > 0 or align_vae else []
    model_kwargs = dict(input_size=args.image_size // vae.downsample, in_channels=vae.latent_channels,
                        num_classes=args.num_classes, class_dropout_prob=args.cfg_prob,
                        z_dims=[e.embed_dim for e in encoders], encoder_depth=args.encoder_depth,
                        qk_norm=args.qk_norm, bn_momentum=bn_momentum)
    sit = create_model(args.model, **model_kwargs)
    if encoders:
        check_token_counts(encoders, sit.x_embedder.num_patches, args.image_size, args.model)
    sit.init_bn(stats["latents_scale"], stats["latents_bias"])
    return vae, sit, encoders, model_kwargs


def build_ldm_method(args: argparse.Namespace, dataset, device):
    """``train_ldm_only.py``: the SiT (latent BatchNorm at the frozen VAE's statistics) on cached latents."""
    from loss.denoising import InterpolantObjective
    from methods.denoising import LDMOnlyMethod
    from models.vae import VAECodec
    from training.data import Batches

    vae, sit, encoders, model_kwargs = build_sit(args, device, bn_momentum=0.1)
    check_latents_vae(dataset, args.vae_ckpt)
    shape, size = tuple(dataset.latent_shape), model_kwargs["input_size"]
    if shape != (model_kwargs["in_channels"], size, size):
        raise ValueError(f"{dataset.latents_path} holds {' x '.join(map(str, shape))} latents, not those of the "
                         f"{args.vae} VAE at --resolution {args.image_size}; cache them with that VAE")
    objective = InterpolantObjective(args.path_type, args.weighting, args.prediction, args.proj_coeff)
    method = LDMOnlyMethod(sit, objective, Batches(dataset, None, device), encoders=encoders, num_classes=args.num_classes,
                           model_kwargs=model_kwargs, sampling={"path_type": args.path_type}, **optimizer_flags(args))
    method.codec = VAECodec(vae.to(device).eval().requires_grad_(False))  # the frozen VAE decodes the samples
    method.sampling_record = repae_record(args, sit, vae_weights=args.vae_ckpt)
    return method


def repae_record(args, sit, vae_weights: str, dataset: str | None = None) -> dict:
    """What a REPA-E checkpoint records for sampling it (``models.pretrained.sampling_record``)."""
    from models.pretrained import sampling_record

    return sampling_record(sit, args.model, args.image_size, args.num_classes, args.vae, dataset=dataset,
                           path_type=args.path_type, vae_weights=vae_weights, encoder_depth=sit.encoder_depth,
                           bn_momentum=sit.bn.momentum)


def build_method(args: argparse.Namespace, dataset, device):
    """The VAE, the SiT with its latent BatchNorm (``build_sit``), the discriminator, the losses and the frozen
    encoders, as ``REPAEMethod``."""
    from loss.autoencoder import VAELoss, load_loss_config
    from loss.denoising import InterpolantObjective
    from loss.perceptual import PerceptualLoss
    from methods.repae import REPAEMethod
    from models.discriminator import NLayerDiscriminator
    from models.vae import PixelCodec
    from training.data import Batches

    loss_config = load_loss_config(args.loss_cfg_path)
    vae, sit, encoders, model_kwargs = build_sit(args, device, args.bn_momentum, args.vae_align_proj_coeff > 0)
    discriminator = NLayerDiscriminator()
    if args.disc_pretrained_ckpt:
        if not Path(args.disc_pretrained_ckpt).is_file():
            raise ValueError(f"--disc-pretrained-ckpt {args.disc_pretrained_ckpt}: no such file")
        discriminator.load_state_dict(torch.load(args.disc_pretrained_ckpt, map_location="cpu", weights_only=True))
    perceptual = PerceptualLoss(random_backbone=args.lpips_random, vgg_path=args.lpips_vgg).to(device) \
        if loss_config.perceptual_weight > 0 else None
    objective = InterpolantObjective(args.path_type, args.weighting, args.prediction, args.proj_coeff)
    method = REPAEMethod(sit, vae, discriminator, objective, VAELoss(loss_config, perceptual), encoders,
                         Batches(dataset, PixelCodec(), device), vae_lr=args.vae_learning_rate,
                         disc_lr=args.disc_learning_rate, vae_align_proj_coeff=args.vae_align_proj_coeff,
                         model_kwargs=model_kwargs, sampling={"path_type": args.path_type}, **optimizer_flags(args))
    method.sampling_record = repae_record(args, sit, "vae", args.dataset)  # the tuned VAE is in the checkpoint
    return method
