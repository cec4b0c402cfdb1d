"""The recipes of ``train.py``: its flags, each model family's defaults (one table of data), their
checks, and the training method a recipe builds.

The families keep their original's flags and defaults: DiT's (DDPM); for SiT models, SiT's own when
no alignment flag is given (no encoder, no clipping, TF32 on, fp32), REPA's once one of ``--enc-type
--proj-coeff --encoder-depth --cls`` is (DINOv2-B, projection weight 0.5, clipping at 1, fp16 on GPUs;
``--cls`` > 0 is REG); the CIFAR-10 U-Net's (cosine schedule, gradient clipping, its shape flags). A flag
of another family is refused.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from common import checkpoint as ckpt_io
from common.cli import none_or_str, require_positive
from diffusion import NOISE_SCHEDULES
from diffusion.pipeline import diffusion_for
from diffusion.sit_transport import PATH_TYPES as SIT_PATH_TYPES
from diffusion.sit_transport import PREDICTIONS
from imagedata.inputs import latent_shape
from loss.denoising import DDPMObjective, InterpolantObjective, SiTObjective
from methods.alignment import check_token_counts
from methods.denoising import DenoisingMethod, InterpolantMethod
from models import MODEL_NAMES, create_model
from models.encoders import load_encoders
from models.pretrained import sampling_record
from training.data import Batches
from training.schedule import LR_SCHEDULES, lr_at


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
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
                   help="micro-batches per update, each of --global-batch-size over the processes (REPA's: the batch of an "
                   "update is their product)")
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
                   help="gradient clipping (default: none for DiT and plain SiT, 1.0 for REPA / REG and the U-Net)")
    p.add_argument("--cfg-prob", type=float, default=0.1, help="label dropout for classifier-free guidance")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: fp16 on GPUs for REPA / REG (their default), else no")
    p.add_argument("--fsdp", action="store_true", help="shard the network, its EMA and optimizer state over the "
                   "processes (FSDP2, torch's fully_shard; each transformer block a unit); checkpoints hold full weights")
    p.add_argument("--allow-tf32", action="store_true", help="TF32 matmuls for REPA / REG (DiT's and SiT's train.py "
                   "always have them)")
    p.add_argument("--resume", type=str, default=None, help="a checkpoint file or a run folder (its newest)")
    p.add_argument("--resume-step", type=int, default=0, help="resume {results-dir}/{exp-name}/checkpoints/"
                   "{step:07d}.pt (REPA)")
    p.add_argument("--report-to", choices=["none", "wandb", "tensorboard"], default="none")
    p.add_argument("--wandb", action="store_true", help="SiT's and DiT's spelling of --report-to wandb")
    p.add_argument("--ckpt", type=str, default=None, help="start from this checkpoint's weights, EMA and optimizer "
                   "(SiT's train.py; a fresh run from step 0, unlike --resume)")
    p.add_argument("--sample-every", type=int, default=None, help="a grid of EMA samples every N steps (SiT: "
                   "10000; default --ckpt-every)")
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance of the sample grids (SiT: 4.0, the "
                   "default)")
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
    sit = p.add_argument_group("SiT / REPA / REG only (none of the first four: plain SiT; any of them: REPA's "
                               "defaults for the rest)")
    sit.add_argument("--enc-type", type=str, default=None, help="frozen encoder(s) (REPA: dinov2-vit-b)")
    sit.add_argument("--encoder-depth", type=int, default=None, help="block whose tokens are aligned (REPA: 8)")
    sit.add_argument("--proj-coeff", type=float, default=None, help="projection loss weight (REPA: 0.5)")
    sit.add_argument("--cls", type=float, default=None, help="REG class-token loss weight (REG: 0.03; default 0)")
    sit.add_argument("--path-type", choices=["linear", "cosine", *SIT_PATH_TYPES], default=None,
                     help="interpolant: REPA's linear (default) or cosine; SiT's Linear, GVP or VP train with SiT's "
                     "own transport, in its time")
    sit.add_argument("--prediction", choices=["v", *PREDICTIONS], default=None,
                     help="model target: REPA's v (default); SiT's velocity, score or noise (SiT's transport)")
    sit.add_argument("--loss-weight", type=none_or_str, choices=[None, "velocity", "likelihood"], default=None,
                     help="SiT: weight of the score and noise losses (default none)")
    sit.add_argument("--train-eps", type=float, default=None, help="SiT: training times kept this far from the ends")
    sit.add_argument("--sample-eps", type=float, default=None, help="SiT: sampling times kept this far from the ends")
    sit.add_argument("--weighting", choices=["uniform", "lognormal"], default=None, help="time sampling (uniform)")
    sit.add_argument("--qk-norm", action="store_true", default=None, help="LayerNorm on queries and keys")
    sit.add_argument("--legacy", action="store_true", default=None,
                     help="drop labels a second time with --cfg-prob, as REPA's first runs did")
    return p.parse_args(argv)


IMAGENET = {"image_size": 256, "num_classes": 1000, "vae": "ema"}  # DiT's and REPA's data defaults
ALIGNMENT_FLAGS = ("enc_type", "proj_coeff", "encoder_depth", "cls")  # any of them given: REPA's defaults
SIT_DEFAULTS = {"enc_type": None, "proj_coeff": 0.0, "cls": 0.0, "path_type": "linear", "prediction": "v",
                "weighting": "uniform", "qk_norm": False, "legacy": False, "max_grad_norm": None,
                "encoder_depth": None, "loss_weight": None, "train_eps": None, "sample_eps": None, **IMAGENET}
SIT_TRANSPORT_FLAGS = ("loss_weight", "train_eps", "sample_eps")  # given: SiT's own transport
REPA_DEFAULTS = {**SIT_DEFAULTS, "enc_type": "dinov2-vit-b", "proj_coeff": 0.5, "max_grad_norm": 1.0}
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


def is_aligned(args: argparse.Namespace) -> bool:
    """REPA or REG (a projection or class-token loss), once the flags are resolved; else plain SiT, DiT, U-Net."""
    return is_sit(args.model) and (args.proj_coeff > 0 or args.cls > 0)


def uses_sit_transport(args: argparse.Namespace) -> bool:
    """SiT's own transport (``diffusion/sit_transport.py``): SiT's spelling of the path or target, or one of its
    other transport flags; REPA's spelling (linear / cosine, v) trains with REPA's interpolants."""
    return is_sit(args.model) and (args.path_type in SIT_PATH_TYPES or args.prediction in PREDICTIONS or
                                   any(getattr(args, k) is not None for k in SIT_TRANSPORT_FLAGS))


def sit_transport_kwargs(args: argparse.Namespace) -> dict:
    """``create_transport`` arguments in SiT's names (REPA's linear / cosine / v read as Linear / GVP / velocity),
    with the eps SiT's defaults give: what the network declares and its checkpoints record."""
    from diffusion.sit_transport import create_transport

    kwargs = {"path_type": {"linear": "Linear", "cosine": "GVP"}.get(args.path_type, args.path_type),
              "prediction": "velocity" if args.prediction == "v" else args.prediction,
              "loss_weight": args.loss_weight, "train_eps": args.train_eps, "sample_eps": args.sample_eps}
    made = create_transport(**kwargs)
    return {**kwargs, "train_eps": made.train_eps, "sample_eps": made.sample_eps}


def use_tf32(args: argparse.Namespace) -> bool:
    """TF32 matmuls: always for DiT, the U-Net and plain SiT (their train.py turn it on), with --allow-tf32 for
    REPA and REG."""
    return args.allow_tf32 or not is_aligned(args)


def resolve_family_flags(args: argparse.Namespace) -> None:
    """Refuse the other families' flags, then fill this family's defaults (so args.json records them): a
    SiT model takes REPA's once an alignment flag is given, SiT's own otherwise."""
    family = family_of(args.model)
    mine = FAMILY_DEFAULTS[family]
    for other, flags in FAMILY_DEFAULTS.items():
        for key in flags:
            if other != family and key not in mine and getattr(args, key) is not None:
                raise ValueError(f"--{key.replace('_', '-')} does not apply to {args.model}: {FAMILY_NAMES[family]} "
                                 f"models do not use it (it is a {FAMILY_NAMES[other]} flag)")
    if family == "sit" and any(getattr(args, key) is not None for key in ALIGNMENT_FLAGS):
        mine = REPA_DEFAULTS
    for key, value in mine.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.mixed_precision is None:
        import torch

        args.mixed_precision = "fp16" if is_aligned(args) and torch.cuda.is_available() else "no"


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
    require_positive(args, "global_batch_size", "log_every", "ckpt_every", "epochs", "num_classes",
                     "gradient_accumulation_steps", "max_steps")
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
    if uses_sit_transport(args):
        check_sit_transport(args)
    if args.wandb:
        args.report_to = "wandb"
    require_positive(args, "sample_every")
    if args.ckpt and args.resume:
        raise ValueError("pass either --ckpt (start from its weights at step 0) or --resume (continue it), not both")
    if args.ckpt and not Path(args.ckpt).is_file():
        raise ValueError(f"--ckpt {args.ckpt}: no such file")
    if args.eval_ref and not Path(args.eval_ref).exists():
        raise ValueError(f"--eval-ref {args.eval_ref} does not exist; pass an ADM reference batch or a file written "
                         "by evaluations/evaluator.py --ref-stats")


def check_sit_transport(args: argparse.Namespace) -> None:
    """SiT's transport trains plain SiT with uniform times, on the paths and targets SiT has."""
    if is_aligned(args):
        raise ValueError("SiT's transport (--path-type Linear|GVP|VP, --prediction velocity|score|noise, --loss-weight, "
                         "--train-eps, --sample-eps) trains plain SiT; REPA and REG train with --path-type linear|cosine "
                         "--prediction v")
    if args.weighting != "uniform":
        raise ValueError(f"--weighting {args.weighting}: SiT's transport draws times uniformly; leave it out")
    sit_transport_kwargs(args)  # refuses what SiT has not


def resume_checkpoint_path(args: argparse.Namespace, ckpt_subdir: str) -> Path | None:
    """The checkpoint to resume: ``--resume`` (a file, or a run folder's newest) or REPA's ``--resume-step``
    in ``{results-dir}/{exp-name}``; None for a fresh run."""
    if args.resume_step:
        args.resume = str(Path(args.results_dir) / args.exp_name / ckpt_subdir / f"{args.resume_step:07d}.pt")
    return ckpt_io.resolve_resume(args.resume, ckpt_subdir) if args.resume else None


# Resuming is re-running the same command: the settings that shape the run must match.
RESUME_KEYS = ("model", "image_size", "num_classes", "vae", "global_batch_size", "global_seed", "enc_type",
               "encoder_depth", "proj_coeff", "cls", "path_type", "prediction", "loss_weight", "weighting",
               "noise_schedule", "cfg_prob", "fsdp")


def optimizer_flags(args: argparse.Namespace) -> dict:
    """AdamW's and the EMA's settings and the gradient clipping, as DiT's, REPA's and REPA-E's flags name them."""
    return dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay,
                eps=args.adam_epsilon, ema_decay=args.ema_decay, max_grad_norm=args.max_grad_norm)


def build_method(args: argparse.Namespace, dataset, codec, device) -> DenoisingMethod:
    """The network (sized by the data and codec), its objective and its method, as the flags say.
    SiT models with alignment load their frozen encoders here."""
    channels, latent_size, _ = latent_shape(dataset, codec, args.image_size)
    model_kwargs = dict(input_size=latent_size, num_classes=args.num_classes, in_channels=channels,
                        class_dropout_prob=args.cfg_prob)
    if family_of(args.model) == "unet":
        model_kwargs.update(unet_kwargs(args))
    encoders = []
    if is_sit(args.model):
        if args.proj_coeff > 0 or args.cls > 0:
            from methods.ssl_encoder import ensure

            ensure(args.enc_type)
            encoders = load_encoders(args.enc_type, device, args.image_size)
        z_dims = [e.embed_dim for e in encoders]
        model_kwargs.update(z_dims=z_dims, qk_norm=args.qk_norm, cls_token_dim=z_dims[0] if args.cls > 0 else None)
        if args.encoder_depth is not None:
            model_kwargs["encoder_depth"] = args.encoder_depth
    transport = sit_transport_kwargs(args) if uses_sit_transport(args) else None
    if transport:  # the network declares SiT's transport and runs in SiT's time, as SiT trains it
        model_kwargs.update(time_convention="sit", transport=transport)
    model = create_model(args.model, **model_kwargs)
    if encoders:
        check_token_counts(encoders, model.x_embedder.num_patches, args.image_size, args.model)
    lr = partial(lr_at, schedule=args.lr_schedule, warmup_steps=args.lr_warmup_steps, min_lr=args.min_lr)
    common = dict(optimizer_flags(args), model_kwargs=model_kwargs,
                  lr_schedule=lambda step, base, total: lr(step, base, total_steps=total))
    batches = Batches(dataset, codec, device)
    common["grid_cfg_scale"] = args.cfg_scale
    record = partial(sampling_record, model, args.model, args.image_size, args.num_classes, args.vae,
                     dataset=args.dataset)
    if not is_sit(args.model):
        schedule = NOISE_SCHEDULES[args.noise_schedule]
        objective = DDPMObjective(diffusion_for(model, "", schedule))
        method = DenoisingMethod(model, objective, batches, sampling={"noise_schedule": schedule}, **common)
        method.sampling_record = record(noise_schedule=args.noise_schedule)
        return method
    if transport:
        from diffusion.sit_transport import create_transport

        path = {"Linear": "linear", "GVP": "cosine"}.get(transport["path_type"], transport["path_type"])
        method = DenoisingMethod(model, SiTObjective(create_transport(**transport)), batches,
                                 sampling={"path_type": path}, **common)
        method.sampling_record = record(path_type=path, encoder_depth=model.encoder_depth)
        return method
    objective = InterpolantObjective(args.path_type, args.weighting, args.prediction, args.proj_coeff, args.cls)
    method = InterpolantMethod(model, objective, batches, encoders=encoders, cls=args.cls > 0,
                               legacy_drop=args.cfg_prob if args.legacy else 0.0, num_classes=args.num_classes,
                               sampling={"path_type": args.path_type}, **common)
    method.sampling_record = record(path_type=args.path_type, encoder_depth=model.encoder_depth)
    return method


def open_dataset(args: argparse.Namespace):
    """``(kind, dataset, class names)`` for the flags, checked against them; a U-Net run without data flags
    takes CIFAR-10 when it can be had, else the built-in images (and says so). ``--overfit`` keeps the first
    ``--samples`` images of each class and caps the batch at their number."""
    from imagedata import CIFAR10_ROOT, build_dataset, class_names, resolve_dataset_kind
    from training.data import overfit_subset

    if family_of(args.model) == "unet" and args.dataset is None and args.data_path is None:
        from imagedata.cifar10 import default_dataset

        args.dataset = default_dataset(CIFAR10_ROOT)
        if args.dataset == "builtin":
            print(f"CIFAR-10 is not in {CIFAR10_ROOT} and cannot be downloaded: training on the built-in images "
                  "(--dataset cifar10 --data-path DIR to use a copy elsewhere)", file=sys.stderr)
    kind = args.dataset = resolve_dataset_kind(args.dataset, args.data_path)  # args.json records what was used
    if args.eval_every and kind != "builtin" and not args.eval_ref:
        raise ValueError("--eval-every needs something to score against: --dataset builtin (proxy metrics) or "
                         "--eval-ref REF.npz (FID, sFID, IS, precision, recall)")
    dataset = build_dataset(kind, args.data_path, args.image_size, args.num_classes)
    if kind == "latents" and args.vae != dataset.vae:
        raise ValueError(f"the latent cache was encoded with --vae {dataset.vae}, not {args.vae}; "
                         f"pass --vae {dataset.vae} (its decoder draws the sample grids)")
    if kind == "repa" and args.vae == "none":
        raise ValueError("REPA/REG's layout holds SD-VAE latents: pass --vae ema or mse (it decodes the grids)")
    if is_sit(args.model) and (args.proj_coeff > 0 or args.cls > 0) and kind == "latents":
        raise ValueError("REPA/REG align to encoder features of the images, which a latent cache does not hold: "
                         "use an image folder or REPA/REG's layout (preprocessing/dataset_tools.py)")
    names = class_names(kind, args.num_classes, dataset)
    if args.overfit:
        dataset = overfit_subset(dataset, args.samples, args.num_classes)
        args.global_batch_size = min(args.global_batch_size, len(dataset))  # every image in every batch
    return kind, dataset, names
