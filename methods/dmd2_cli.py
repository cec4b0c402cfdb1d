"""The flags of ``train_dmd2.py`` (the union of DMD2's ``main/edm/train_edm.py`` and ``main/train_sd.py``, in
their spelling, with hyphenated aliases), the teacher it loads and the method it builds (``methods/dmd2.py``)."""

from __future__ import annotations

import argparse
from copy import deepcopy
from pathlib import Path

import torch

from common.cli import require_positive, use_local_rank
from methods.dmd2_teacher import GRID, DDPMTeacher, FlowTeacher, Teacher
from methods.dmd2_text import load_text_teacher
from models.stable_diffusion import is_diffusers_model


def sd15_top_sigma() -> float:
    """sigma of SD1.5's step 999 (scaled-linear betas 0.00085 to 0.012): 14.61, where DMD2 distils SD."""
    import numpy as np

    abar = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2)
    return float(np.sqrt((1 - abar[-1]) / abar[-1]))


# An eps teacher's x0 at sigma is sqrt(1 + sigma^2) x - sigma eps: eps errors grow sigma-fold (157-fold at
# DiT's step 999). Without an explicit level, such a generator starts at most at SD1.5's step 999, the level
# DMD2 distils SD at; measurements in docs/notes/dmd2.md.
EPS_CONDITIONING_SIGMA = sd15_top_sigma()


def within_cap(sigma):
    """``sigma <= EPS_CONDITIONING_SIGMA``, with room for SD's own table (float32: 4e-7 above the float64 value)."""
    return sigma <= EPS_CONDITIONING_SIGMA * (1 + 1e-5)


def add_flag(p, name: str, **kw) -> None:
    """``--name_with_underscores`` as DMD2 spells it, and ``--name-with-hyphens``."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    p.add_argument(*names, dest=name, **kw)


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    add_flag(p, "teacher", type=str, default=None, help="the teacher: a train.py checkpoint, an official DiT / REPA release, "
          "EDM's network pickle (edm-imagenet-64x64-cond-adm.pkl), or a Stable Diffusion model: a hub id "
          "(runwayml/stable-diffusion-v1-5, through the Hugging Face cache) or a diffusers folder (unet/, scheduler/)")
    p.add_argument("--model_id", "--model-id", dest="teacher", type=str, help="DMD2's name for --teacher")
    add_flag(p, "revision", type=str, default=None, help="the hub revision of a --model_id hub id")
    add_flag(p, "output_path", type=str, default="results", help="the run folders' parent")
    add_flag(p, "exp_name", type=str, default=None, help="run folder {output_path}/{exp_name} (default: numbered)")
    add_flag(p, "train_iters", type=int, default=1_000_000)
    add_flag(p, "log_iters", type=int, default=100, help="checkpoint every N steps")
    add_flag(p, "wandb_iters", type=int, default=100, help="log the losses and draw a sample grid every N steps")
    add_flag(p, "batch_size", type=int, default=1, help="per process, as DMD2's")
    add_flag(p, "seed", type=int, default=0)
    add_flag(p, "train_prompt_path", type=str, default=None, help="text-to-image teachers: the training prompts (a "
          "text file, one a line, or DMD2's captions .pkl)")
    add_flag(p, "real_image_path", type=str, default=None, help="real images for the GAN head and --denoising: an "
          "LMDB in DMD2's format, an image folder, or a latent cache (default: none, or --dataset builtin)")
    add_flag(p, "dataset", choices=["builtin", "cifar10", "folder", "latents", "lmdb"], default=None,
          help="default: from what --real_image_path holds")
    add_flag(p, "num_workers", type=int, default=12)
    add_flag(p, "initialie_generator", action=argparse.BooleanOptionalAction, default=True,
          help="start the generator from the teacher's weights (DMD2's spelling); --no-initialie_generator: from a fresh "
          "initialisation of the same network")
    add_flag(p, "generator_lr", type=float, default=2e-6)
    add_flag(p, "guidance_lr", type=float, default=2e-6)
    add_flag(p, "warmup_step", type=int, default=500, help="linear warm-up from 0 (diffusers' constant_with_warmup), "
          "over warmup_step / processes iterations as DMD2's accelerate-prepared scheduler")
    add_flag(p, "max_grad_norm", type=float, default=10.0)
    add_flag(p, "min_step_percent", type=float, default=0.02)
    add_flag(p, "max_step_percent", type=float, default=0.98)
    add_flag(p, "dfake_gen_update_ratio", type=int, default=1, help="update the generator every N steps (TTUR)")
    add_flag(p, "real_guidance_scale", type=float, default=None, help="the teacher's guidance in the DM loss (1: none; "
          "default: train_sd.py's 6 for a text-to-image teacher, 1 for a class-conditional one, as train_edm.py, "
          "which never guides)")
    add_flag(p, "conditioning_sigma", type=float, default=None, help="the generator's noise level on the common "
          "sigma scale (EDM: 80); default: --conditioning_timestep's")
    add_flag(p, "conditioning_timestep", type=int, default=None, help="the generator's noise level as an index into "
          "the teacher's own 1000 levels (DDPM step; interpolant t = index / 999; EDM: Karras grid); default 999, "
          f"for eps teachers at most sigma {EPS_CONDITIONING_SIGMA:.2f}, SD1.5's step 999 (docs/notes/dmd2.md)")
    add_flag(p, "sigma_min", type=float, default=0.002, help="EDM teachers: the Karras grid")
    add_flag(p, "sigma_max", type=float, default=80.0)
    add_flag(p, "rho", type=float, default=7.0)
    add_flag(p, "sigma_data", type=float, default=0.5)
    add_flag(p, "gan_classifier", action="store_true", help="DMD2's GAN head on the fake score's bottleneck (EDM)")
    add_flag(p, "cls_on_clean_image", action="store_true", help="the GAN head (train_sd.py's name)")
    add_flag(p, "gen_cls_loss", action="store_true", help="the generator's GAN loss (train_sd.py)")
    add_flag(p, "gen_cls_loss_weight", type=float, default=0.0)
    add_flag(p, "cls_loss_weight", type=float, default=1.0, help="the GAN head's loss weight with --gan_classifier")
    add_flag(p, "guidance_cls_loss_weight", type=float, default=0.0,
          help="the GAN head's loss weight with --cls_on_clean_image")
    add_flag(p, "diffusion_gan", action="store_true", help="noise real and generated images before the GAN head")
    add_flag(p, "diffusion_gan_max_timestep", type=int, default=0)
    add_flag(p, "denoising", action="store_true", help="a few-step generator (--num_denoising_step)")
    add_flag(p, "num_denoising_step", type=int, default=1)
    add_flag(p, "denoising_timestep", type=int, default=None, help=f"the few-step generator's steps are "
          f"denoising_timestep - 1 down in strides of denoising_timestep // num_denoising_step, above "
          f"--num_denoising_step and at most {GRID} (DMD2's default {GRID}: [999, 749, 499, 249] for four); default: "
          f"{GRID}, for eps teachers the levels up to sigma {EPS_CONDITIONING_SIGMA:.2f}")
    add_flag(p, "backward_simulation", action="store_true", help="train the few-step generator on its own samples")
    add_flag(p, "generator_lora", action="store_true", help="train LoRA adapters of the generator (peft)")
    add_flag(p, "lora_rank", type=int, default=64)
    add_flag(p, "lora_alpha", type=float, default=8)
    add_flag(p, "lora_dropout", type=float, default=0.0)
    add_flag(p, "use_fp16", action="store_true", help="bfloat16 autocast (DMD2's --use_fp16 means bf16)")
    add_flag(p, "fsdp", action="store_true", help="shard the generator, the guidance model and their optimizer states "
          "over the processes (FSDP2)")
    add_flag(p, "gradient_checkpointing", action="store_true", help="recompute the generator's and the fake score's "
          "block activations in the backward pass instead of storing them (less memory, about a third more compute)")
    add_flag(p, "dm_loss_weight", type=float, default=1.0, help="the distribution-matching loss's weight")
    add_flag(p, "gan_alone", action="store_true", help="train the generator with the GAN loss only (no DM loss, the "
          "teacher is never run)")
    add_flag(p, "fake_guidance_scale", type=float, default=1.0, help="guidance of the fake score: 1 (none), as DMD2 "
          "requires")
    add_flag(p, "gradient_accumulation_steps", type=int, default=1, help="1: DMD2 accumulates no gradients")
    add_flag(p, "num_train_timesteps", type=int, default=GRID, help="the teacher's grid of levels: 1000, as DMD2's")
    shape = p.add_argument_group("checks against the teacher (default: the teacher's own)")
    add_flag(shape, "resolution", type=int, default=None, help="image resolution")
    add_flag(shape, "label_dim", type=int, default=None, help="number of classes (class-conditional teachers)")
    add_flag(shape, "latent_resolution", type=int, default=None, help="resolution of the generated latents")
    add_flag(shape, "latent_channel", type=int, default=None, help="channels of the generated latents")
    run = p.add_argument_group("checkpoints and logging")
    add_flag(run, "checkpoint_path", type=str, default=None, help="resume exactly from a train_dmd2.py checkpoint")
    add_flag(run, "ckpt_only_path", type=str, default=None, help="continue from the generator's and the guidance model's "
          "weights without their optimizer states (the learning rates warm up again): a DMD2 checkpoint folder "
          "(pytorch_model.bin, pytorch_model_1.bin; the step from its name, checkpoint_model_NNNNNN) or a "
          "train_dmd2.py checkpoint")
    add_flag(run, "generator_ckpt_path", type=str, default=None, help="start the generator from these weights: a "
          "state dict file, a DMD2 checkpoint folder (its pytorch_model.bin) or a train_dmd2.py checkpoint")
    add_flag(run, "no_save", action="store_true", help="write no checkpoints (debugging)")
    add_flag(run, "checkpoint_layout", choices=["ours", "dmd2"], default="ours", help="dmd2: also write every "
          "checkpoint as DMD2 does, checkpoint_model_NNNNNN/ with pytorch_model.bin (the generator) and "
          "pytorch_model_1.bin (the guidance model), which DMD2's evaluation reads")
    add_flag(run, "delete_ckpts", action="store_true", help="keep only the newest checkpoint in the run folder")
    add_flag(run, "cache_dir", type=str, default="", help="also copy every checkpoint to {cache_dir}/{run folder name}/, "
          "which keeps the newest --max_checkpoint")
    add_flag(run, "max_checkpoint", type=int, default=200, help="checkpoints kept in --cache_dir")
    add_flag(run, "dataset_name", type=str, default=None, help="the data's name, in the run folder's name")
    add_flag(run, "report_to", choices=["none", "wandb", "tensorboard"], default=None,
          help="default: wandb when a --wandb_* flag is given, else none")
    add_flag(run, "wandb_project", type=str, default=None, help="wandb project (default: the run folder's name)")
    add_flag(run, "wandb_entity", type=str, default=None, help="wandb user or team")
    add_flag(run, "wandb_name", type=str, default=None, help="wandb run name")
    add_flag(run, "log_path", type=str, default=None, help="the trackers' folder (default: the run folder)")
    add_flag(run, "log_loss", action="store_true", help="log the losses at every step (the grids stay every "
          "--wandb_iters)")
    add_flag(run, "grid_size", type=int, default=4, help="the sample grids show grid_size^2 samples")
    add_flag(run, "local_rank", type=int, default=-1, help="torch.distributed.launch's rank on this node (torchrun and "
          "accelerate launch set LOCAL_RANK instead)")
    add_flag(p, "sdxl", action="store_true", help="the teacher is SDXL (checked against its UNet)")
    add_flag(p, "tiny_vae", action="store_true", help="SDXL: decode the sample grids with TAESD (madebyollin/taesdxl)")
    refused = p.add_argument_group("DMD2 flags train_dmd2.py refuses with the reason")
    for name, kw in (("lr", {"type": float}), ("denoising_loss_weight", {"type": float})):
        add_flag(refused, name, default=None, help=argparse.SUPPRESS, **kw)
    return p.parse_args(argv)


# DMD2 flags with no place here, each refused in one line that says what to do instead.
REFUSED = {
    "lr": "DMD2 never reads --lr: set --generator_lr and --guidance_lr",
    "denoising_loss_weight": "DMD2 never reads --denoising_loss_weight; the fake score's loss has weight 1",
}


def validate_teacher(args: argparse.Namespace) -> None:
    """``--teacher`` / ``--model_id`` exists (or is a hub id) and the Stable Diffusion flags fit it."""
    if not args.teacher:
        raise ValueError("no teacher: pass --teacher (a checkpoint, EDM's .pkl or a diffusers folder)")
    if not Path(args.teacher).expanduser().exists() and not is_diffusers_model(args.teacher):
        raise ValueError(f"--teacher {args.teacher} does not exist (a checkpoint, EDM's .pkl, a diffusers folder or a "
                         "Stable Diffusion hub id)")
    for flag in ("sdxl", "tiny_vae"):
        if getattr(args, flag) and not is_diffusers_model(args.teacher):
            raise ValueError(f"--{flag}: --teacher {args.teacher} is not a Stable Diffusion model (SDXL's folder or "
                             "hub id, e.g. stabilityai/stable-diffusion-xl-base-1.0)")
    if args.revision is not None and Path(args.teacher).expanduser().exists():
        raise ValueError(f"--revision {args.revision} picks a hub revision, but --model_id {args.teacher} is a local "
                         "folder: drop --revision")


def validate(args: argparse.Namespace) -> None:
    validate_teacher(args)
    if not 0 <= args.min_step_percent < args.max_step_percent <= 1:
        raise ValueError("--min_step_percent and --max_step_percent must satisfy 0 <= min < max <= 1")
    require_positive(args, "batch_size", "dfake_gen_update_ratio", "train_iters", "log_iters", "wandb_iters",
                     "num_denoising_step", "max_checkpoint", "grid_size", flag="--{}".format)
    if args.backward_simulation and not args.denoising:
        raise ValueError("--backward_simulation simulates the steps of a few-step generator: add --denoising")
    if args.num_denoising_step > 1 and not args.denoising:
        raise ValueError("--num_denoising_step > 1 trains a few-step generator: add --denoising")
    if args.denoising_timestep is not None and not args.denoising:
        raise ValueError("--denoising_timestep sets a few-step generator's steps: add --denoising")
    if args.denoising_timestep is not None and not args.num_denoising_step < args.denoising_timestep <= GRID:
        raise ValueError(f"--denoising_timestep {args.denoising_timestep}: with --num_denoising_step "
                         f"{args.num_denoising_step} it must lie between {args.num_denoising_step + 1} and {GRID} "
                         f"(the teacher's grid of {GRID} levels)")
    if args.generator_lora:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ValueError("--generator_lora needs the peft package: pip install peft") from None
    gan = args.gan_classifier or args.cls_on_clean_image
    if (args.gen_cls_loss or args.diffusion_gan) and not gan:
        raise ValueError("--gen_cls_loss / --diffusion_gan use the GAN head: add --gan_classifier")
    if args.diffusion_gan and args.diffusion_gan_max_timestep < 1:
        raise ValueError("--diffusion_gan needs --diffusion_gan_max_timestep > 0 (DMD2's ImageNet recipe: 1000)")
    for name, reason in REFUSED.items():
        if getattr(args, name) not in (None, False):
            raise ValueError(f"--{name}: {reason}")
    if args.gan_alone and not (gan and (args.gen_cls_loss or args.gan_classifier) and args.gen_cls_loss_weight > 0):
        raise ValueError("--gan_alone trains the generator with the GAN loss only: add --gan_classifier (or "
                         "--cls_on_clean_image --gen_cls_loss) and --gen_cls_loss_weight > 0")
    if args.fake_guidance_scale != 1:
        raise ValueError(f"--fake_guidance_scale {args.fake_guidance_scale}: the fake score is unguided in DMD2 "
                         "(its scripts assert 1); guide the real score with --real_guidance_scale")
    if args.gradient_accumulation_steps != 1:
        raise ValueError("--gradient_accumulation_steps must be 1, as in DMD2 (every step updates the guidance "
                         "model); raise --batch_size or the number of processes instead")
    if args.num_train_timesteps != GRID:
        raise ValueError(f"--num_train_timesteps {args.num_train_timesteps}: every teacher here is read on a grid "
                         f"of {GRID} levels, as DMD2's")
    for name in ("ckpt_only_path", "generator_ckpt_path"):
        given = getattr(args, name)
        if given is not None and args.checkpoint_path is not None:
            raise ValueError(f"--{name} and --checkpoint_path: the checkpoint already holds the weights; pass one")
        if given is not None and not Path(given).exists():
            raise ValueError(f"--{name} {given} does not exist")
    if args.ckpt_only_path is not None and args.generator_ckpt_path is not None:
        raise ValueError("--ckpt_only_path already holds the generator's weights: drop --generator_ckpt_path")
    if args.report_to is None:  # DMD2 always logs to wandb; its flags ask for it here
        args.report_to = "wandb" if args.wandb_project or args.wandb_entity or args.wandb_name else "none"
    use_local_rank(args)


def run_parts(args: argparse.Namespace, script: str, match: tuple[str, ...], keys: tuple[str, ...]) -> dict:
    """The ``RunSpec`` parts every DMD2-flag script takes alike: ``resume`` (``--checkpoint_path``, the flags that
    must match) and ``trackers`` (DMD2's ``--wandb_*`` flags, ``--log_path``)."""
    from training.fit import Resume, Trackers

    wandb = {k: v for k, v in (("entity", args.wandb_entity), ("name", args.wandb_name)) if v}
    return {"resume": Resume(Path(args.checkpoint_path) if args.checkpoint_path else None, match, "--checkpoint_path",
                             lambda key: f"--{key}", keys, script),
            "trackers": Trackers(args.report_to, str(Path(args.log_path).absolute()) if args.log_path else None,
                                 args.wandb_project, wandb)}


def check_teacher_shape(args: argparse.Namespace, cfg: dict) -> None:
    """``--resolution``, ``--label_dim``, ``--latent_resolution`` and ``--latent_channel`` (DMD2 builds its
    networks from them; here the teacher does) must agree with the teacher, else one line says its values."""
    teacher = {"resolution": cfg["image_size"], "label_dim": cfg["num_classes"],
               "latent_resolution": cfg["latent_size"], "latent_channel": cfg["latent_channels"]}
    for name, value in teacher.items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise ValueError(f"--{name} {given}: the teacher {cfg['ckpt']} has {name} {value}; drop the flag or "
                             "pass another teacher")


def freeze(model: torch.nn.Module) -> None:
    """Freeze the teacher, remembering which parameters train by design (``model.trainable``) for the fake
    score and the generator copied from it."""
    from training.engine import Trainable

    model.trainable = Trainable(model)
    model.requires_grad_(False)


def unreadable_teacher(path: Path, err: Exception) -> ValueError:
    return ValueError(f"--teacher {path}: not a teacher this repository can read (a train.py checkpoint, an official "
                      f"DiT / REPA release, EDM's .pkl): {str(err).splitlines()[0]}")


def load_teacher(args: argparse.Namespace, device) -> tuple[Teacher, dict, object]:
    """``(teacher, its sampling config, its codec)`` from ``--teacher``; every kind of checkpoint this
    repository samples, EDM's pickles and diffusers folders."""
    from diffusion.network import contract
    from diffusion.pipeline import base_alphas_cumprod, diffusion_for
    from loss.denoising import DDPMObjective, InterpolantObjective
    from models.pretrained import REPAE_VAES, Query, build_for_sampling, load_codec, sampling_config

    path = Path(args.teacher)
    if is_diffusers_model(args.teacher):
        teacher, cfg, codec, teacher.encoder = load_text_teacher(args, args.teacher, device)
        freeze(teacher.model)
        return teacher, cfg, codec
    try:
        state_dict, cfg = sampling_config(Query(ckpt=str(path)))
    except (ValueError, KeyError, RuntimeError) as err:
        raise unreadable_teacher(path, err) from None
    if cfg["vae"] in REPAE_VAES or "bn.running_var" in state_dict:  # checked before its VAE is loaded
        raise ValueError(f"--teacher {path} is a REPA-E model (its own {cfg['vae']} VAE, a latent BatchNorm): DMD2 "
                         "cannot distil REPA-E teachers yet; distil a DiT / SiT / REPA teacher")
    try:
        if cfg.get("generator_sigmas"):
            raise ValueError("it is a distilled generator, not a diffusion model: distil its teacher")
        if cfg["model"] == "EDM":
            return load_edm_teacher(args, state_dict, cfg, device)
        if "y_embedder.embedding_table.weight" not in state_dict:  # DiT, SiT and the U-Net all have it
            raise ValueError(f"its weights are no class-conditional model of this repository (keys "
                             f"{', '.join(list(state_dict)[:3])}, ...)")
        codec = load_codec(cfg, device)
        model = build_for_sampling(state_dict, cfg, codec, device)
    except (ValueError, KeyError, RuntimeError) as err:
        raise unreadable_teacher(path, err) from None
    declared = contract(model)
    if declared.cls_token_dim:
        raise ValueError(f"--teacher {path} is a REG model (class-token entanglement): DMD2 cannot distil REG "
                         "teachers yet; distil a SiT / REPA teacher")
    freeze(model)
    null = declared.null_class
    if declared.prediction == "velocity":
        objective = InterpolantObjective(cfg["path_type"], proj_coeff=0.0)
        return FlowTeacher(model, cfg["path_type"], objective, null), cfg, codec
    schedule = cfg.get("noise_schedule", "linear")
    objective = DDPMObjective(diffusion_for(model, "", schedule))
    return DDPMTeacher(model, base_alphas_cumprod(schedule), objective, null), cfg, codec


# How DMD2 builds its EDM networks (main/edm/edm_network.py: dropout 0, label dropout 0) and evaluates its
# generators (main/edm/test_folder_edm.py: use_fp16 False); --use_fp16 is bf16 autocast here.
DMD2_EDM_NETWORK = {"use_fp16": False, "dropout": 0.0, "label_dropout": 0}


def load_edm_teacher(args, state_dict: dict, cfg: dict, device):
    """An EDM network (EDM's pickle, or an EDMPrecond checkpoint) with DMD2's Karras grid; pixel space. The
    teacher, the fake score and the generator copied from it are built as DMD2 builds them (``DMD2_EDM_NETWORK``),
    so the generator's checkpoint records fp32 sampling and dropout can never act."""
    from methods.dmd2_teacher import EDMTeacher
    from models.pretrained import build_for_sampling
    from models.vae import load_vae

    cfg["model_kwargs"] = {**cfg["model_kwargs"], **DMD2_EDM_NETWORK}
    codec = load_vae("none", device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    freeze(model)
    return EDMTeacher(model, args.sigma_min, args.sigma_max, args.rho, args.sigma_data), cfg, codec


def fresh_init(net: torch.nn.Module) -> None:
    """The network's own initialisation (DiT's / SiT's ``initialize_weights``), else every layer's default."""
    if hasattr(net, "initialize_weights"):
        net.initialize_weights()
        return
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def lora_generator(generator: torch.nn.Module, args) -> torch.nn.Module:
    """LoRA adapters (peft) on the generator's linear and convolution layers; only they train. EDM's
    networks have their own layer classes: their fully connected layers (embeddings, each block's
    affine map) get adapters through peft's custom-module mapping, their convolutions stay frozen."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora.layer import Linear as LoraLinear

    from models.edm_unet import Linear as EDMLinear

    kinds = (torch.nn.Linear, torch.nn.Conv2d, EDMLinear)
    targets = [name for name, m in generator.named_modules() if isinstance(m, kinds) and name]
    generator.requires_grad_(False)
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets)
    config._register_custom_module({EDMLinear: LoraLinear})
    return inject_adapter_in_model(config, generator)


def generator_levels(args, teacher: Teacher) -> list[float]:
    """The generator's noise levels: its conditioning level (``--conditioning_sigma``, else the teacher's own
    ``--conditioning_timestep``, clamped to its range), or with ``--denoising`` the levels of
    ``denoising_step_list``. By default an eps teacher's top level is capped at ``EPS_CONDITIONING_SIGMA``, and its
    denoising steps span the levels up to the cap (DiT: steps [726, 545, 364, 183] of the 727 at most 14.6, instead
    of [999, 749, 499, 249], whose first two levels, 157 and 17.2, lie above it). A level given explicitly
    (``--conditioning_timestep``, ``--conditioning_sigma``, ``--denoising_timestep``) lifts the cap:
    ``--denoising_timestep 1000`` gives DMD2's list. The levels must strictly decrease."""
    from loss.dmd import denoising_step_list

    given = (args.conditioning_sigma, args.conditioning_timestep, args.denoising_timestep if args.denoising else None)
    capped = teacher.family == "ddpm" and all(flag is None for flag in given)
    if args.denoising:
        top = GRID if args.denoising_timestep is None else args.denoising_timestep
        if capped:  # the steps span the levels up to the cap, in the teacher's own grid
            top = int(within_cap(teacher.sigmas).sum())
        index = torch.tensor(denoising_step_list(args.num_denoising_step, top, GRID))
        sigmas = [float(s) for s in teacher.sigma(index)]
        if any(later >= earlier for earlier, later in zip(sigmas, sigmas[1:])):
            raise ValueError(f"the generator's noise levels {[round(s, 4) for s in sigmas]} (steps {index.tolist()}) "
                             "do not strictly decrease; raise --denoising_timestep or lower --num_denoising_step")
    elif args.conditioning_sigma is not None:
        sigmas = [float(args.conditioning_sigma)]
    else:
        index = GRID - 1 if args.conditioning_timestep is None else args.conditioning_timestep
        sigmas = [float(teacher.sigma(torch.tensor([min(max(index, 0), GRID - 1)]))[0])]
    if capped:
        sigmas[0] = sigmas[0] if within_cap(sigmas[0]) else EPS_CONDITIONING_SIGMA
    return sigmas


def condition_sampler(teacher: Teacher, num_classes: int):
    """The generator's conditions, DMD2's: uniformly random classes, or random training prompts' embeddings."""
    prompts = teacher.prompts

    def draw(n: int, device) -> torch.Tensor:
        if prompts is not None:
            return prompts.draw(n, device)
        return torch.randint(0, num_classes, (n,), device=device)

    return draw


def generator_record(args, teacher: Teacher, cfg: dict, levels: list[float]) -> dict:
    """What a generator's checkpoint records for sampling it (``models.pretrained.sampling_record``): the teacher's
    model, resolution, classes, codec and noise schedule or path, the generator's noise levels, its LoRA scale."""
    from models.pretrained import sampling_record

    schedule = {"squaredcos_cap_v2": "cosine"}.get(cfg.get("noise_schedule"), "linear")
    extra = {"model_kwargs": cfg["model_kwargs"]} if cfg["model"] == "EDM" else {}
    if cfg["model"] == "diffusers":  # the base model sample.py --prompt reads the text encoder and VAE of
        extra["sd_model"] = cfg["sd_model"]
    if getattr(args, "generator_lora", False):  # train_sd_ode.py trains no adapters and has no such flag
        extra.update(lora_alpha=args.lora_alpha, lora_rank=args.lora_rank)
    return sampling_record(teacher.model, cfg["model"], cfg["image_size"], cfg["num_classes"], cfg["vae"],
                           noise_schedule=schedule, path_type=cfg.get("path_type"),
                           generator_sigmas=[float(s) for s in levels], **extra)


def build_method(args, teacher: Teacher, cfg: dict, codec, data, draw_labels, device, batch_size: int, *,
                 processes: int = 1, warmup_from: int = 0, notes: tuple[str, ...] = ()):
    from methods.dmd2 import DMD2Method, Guidance
    from models.discriminator import dmd2_classifier_head

    generator, fake = deepcopy(teacher.model), deepcopy(teacher.model)
    for net in (generator, fake):  # what trains by design (not a fixed sin-cos position table)
        teacher.model.trainable.set(net.requires_grad_(False), True)
    if not args.initialie_generator:
        fresh_init(generator)
    if args.generator_ckpt_path:
        from methods.dmd2_weights import generator_weights, load_into

        load_into(generator, generator_weights(args.generator_ckpt_path), f"--generator_ckpt_path {args.generator_ckpt_path}")
    head = None
    channels, size = cfg["latent_channels"], cfg["latent_size"]
    if args.gan_classifier or args.cls_on_clean_image:
        probe = torch.zeros(1, channels, size, size, device=device)
        y = teacher.null.to(device) if torch.is_tensor(teacher.null) else draw_labels(1, device)  # the empty prompt
        with torch.no_grad():
            features = teacher.bottleneck(teacher.model, probe, teacher.sigma(torch.zeros(1, dtype=torch.long)), y)
        head = dmd2_classifier_head(features.shape[1], features.shape[-1])
    if args.generator_lora:
        generator = lora_generator(generator, args)
    if args.gradient_checkpointing:
        from models.activation_checkpointing import enable_activation_checkpointing

        for net in (generator, fake):
            if not enable_activation_checkpointing(net):
                raise ValueError(f"--gradient_checkpointing: {type(net).__name__} has no blocks to checkpoint")
    if args.real_guidance_scale is None:  # DMD2: train_sd.py's default 6; train_edm.py does not guide
        args.real_guidance_scale = 6.0 if cfg["model"] == "diffusers" else 1.0
    if args.real_guidance_scale > 1 and teacher.null is None:
        raise ValueError(f"--real_guidance_scale {args.real_guidance_scale} needs the teacher's null class, which "
                         f"{cfg['ckpt']} never learned (no label dropout); distil it with --real_guidance_scale 1")
    cls_weight = args.guidance_cls_loss_weight if args.cls_on_clean_image else args.cls_loss_weight
    teacher_note = f"teacher {cfg['ckpt']} ({cfg['model']}, {teacher.family})"
    levels = generator_levels(args, teacher)
    return DMD2Method(
        teacher, generator, Guidance(fake, head), data, draw_labels, shape=(channels, size, size), batch_size=batch_size,
        generator_lr=args.generator_lr, guidance_lr=args.guidance_lr, device=device,
        dfake_gen_update_ratio=args.dfake_gen_update_ratio, real_guidance_scale=args.real_guidance_scale,
        generator_sigmas=levels, min_step_percent=args.min_step_percent, max_step_percent=args.max_step_percent,
        gen_cls_loss_weight=args.gen_cls_loss_weight, cls_loss_weight=cls_weight,
        dm_loss_weight=args.dm_loss_weight, gan_alone=args.gan_alone,
        gen_cls_loss=args.gen_cls_loss or args.gan_classifier, diffusion_gan=args.diffusion_gan,
        diffusion_gan_max_timestep=args.diffusion_gan_max_timestep, denoising=args.denoising,
        backward_simulation=args.backward_simulation, max_grad_norm=args.max_grad_norm,
        model_kwargs=cfg.get("model_kwargs") or {},
        sampling={"noise_schedule": cfg.get("noise_schedule", "linear"), "path_type": cfg.get("path_type") or "linear"},
        codec=codec, num_classes=cfg["num_classes"], sampling_record=generator_record(args, teacher, cfg, levels),
        warmup_step=args.warmup_step, processes=processes, warmup_from=warmup_from, notes=(teacher_note, *notes))
