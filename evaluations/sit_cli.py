"""SiT's positional mode of ``sample.py`` and ``sample_ddp.py``: ``python sample.py ODE|SDE [SiT's flags]``.

The mode switches the script to SiT's command line (willisma/SiT ``sample.py``, ``sample_ddp.py`` and
``train_utils.py``): SiT's defaults (SiT-XL/2 and its release without ``--ckpt``; ``sample.py``: VAE mse, cfg 4.0;
``sample_ddp.py``: VAE ema, cfg 1.0, 4 images per process), its transport flags and the ODE's or the SDE's, and
SiT's samplers (``diffusion/sit_samplers.py``) with any model. Unknown flags are refused (SiT ignores them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import none_or_str
from diffusion.sit_transport import DIFFUSION_FORMS, PATH_TYPES, PREDICTIONS, create_transport

MODES = ("ODE", "SDE")
SCRIPT_DEFAULTS = {"sample.py": {"vae": "mse", "cfg_scale": 4.0}, "sample_ddp.py": {"vae": "ema", "cfg_scale": 1.0}}


def split_mode(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(mode, the other arguments)`` when the first argument is SiT's ``ODE`` or ``SDE``."""
    if argv and argv[0] in MODES:
        return argv[0], argv[1:]
    return None, argv


def add_sit_args(p: argparse.ArgumentParser, mode: str, script: str) -> None:
    """SiT's flags for ``script`` in ``mode``, with its defaults."""
    defaults = SCRIPT_DEFAULTS[script]
    p.add_argument("--model", type=str, default="SiT-XL/2")
    p.add_argument("--vae", type=str, default=defaults["vae"], help="ema | mse (SiT's), or any VAE here")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--cfg-scale", type=float, default=defaults["cfg_scale"])
    p.add_argument("--num-sampling-steps", type=int, default=250)
    p.add_argument("--ckpt", type=str, default=None, help="default: SiT's release SiT-XL-2-256x256.pt")
    transport = p.add_argument_group("Transport arguments")
    transport.add_argument("--path-type", type=str, default="Linear", choices=PATH_TYPES)
    transport.add_argument("--prediction", type=str, default="velocity", choices=PREDICTIONS)
    transport.add_argument("--loss-weight", type=none_or_str, default=None, choices=[None, "velocity", "likelihood"])
    transport.add_argument("--sample-eps", type=float)
    transport.add_argument("--train-eps", type=float)
    if mode == "ODE":
        ode = p.add_argument_group("ODE arguments")
        ode.add_argument("--sampling-method", type=str, default="dopri5", help="any torchdiffeq solver")
        ode.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance")
        ode.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance")
        ode.add_argument("--reverse", action="store_true", help="integrate from data to noise")
        ode.add_argument("--likelihood", action="store_true", help="also write each sample's log-likelihood under "
                         "the ODE (nats and bits per dimension) beside the samples; needs --cfg-scale 1")
    else:
        sde = p.add_argument_group("SDE arguments")
        sde.add_argument("--sampling-method", type=str, default="Euler", choices=["Euler", "Heun"])
        sde.add_argument("--diffusion-form", type=str, default="sigma", choices=DIFFUSION_FORMS,
                         help="form of diffusion coefficient in the SDE")
        sde.add_argument("--diffusion-norm", type=float, default=1.0)
        sde.add_argument("--last-step", type=none_or_str, default="Mean", choices=[None, "Mean", "Tweedie", "Euler"],
                         help="form of last step taken in the SDE")
        sde.add_argument("--last-step-size", type=float, default=0.04, help="size of the last step taken")


def sit_query(args: argparse.Namespace):
    """The checkpoint query of SiT's flags: SiT-XL/2's release without ``--ckpt``; SiT's ``--path-type`` names
    the sampler's path and is checked against the checkpoint's (``sit_sampling``), not read into it."""
    from models.pretrained import Query

    return Query(ckpt=args.ckpt, model=args.model, image_size=args.image_size, num_classes=args.num_classes,
                 vae=args.vae, default_model="SiT-XL/2", default_vae=args.vae)


def sit_sampling(args: argparse.Namespace, cfg: dict) -> dict:
    """``diffusion.pipeline.generate_sit`` arguments for the parsed SiT flags and the checkpoint's settings,
    refusing in one line what SiT's samplers cannot do with it."""
    declared = (cfg.get("model_kwargs") or {}).get("transport")
    if declared:  # trained with SiT's transport: the flags must say what it was trained with, as in SiT
        for flag in ("path_type", "prediction"):
            if getattr(args, flag) != declared[flag]:
                name = "--" + flag.replace("_", "-")
                raise ValueError(f"{name} {getattr(args, flag)}: {cfg['ckpt']} was trained with {name} "
                                 f"{declared[flag]}; pass {name} {declared[flag]}")
    elif args.prediction != "velocity":
        raise ValueError(f"--prediction {args.prediction}: this checkpoint's network is read through its velocity "
                         "(every model here can be); leave out --prediction")
    elif cfg.get("path_type") and cfg["model"].startswith("SiT-"):
        trained = {"linear": "Linear", "cosine": "GVP"}.get(cfg["path_type"], cfg["path_type"])
        if trained != args.path_type:
            raise ValueError(f"--path-type {args.path_type}: {cfg['ckpt']} was trained on the {trained} path; pass "
                             f"--path-type {trained}")
    if args.cfg_scale < 1.0:
        raise ValueError(f"--cfg-scale {args.cfg_scale}: SiT samples with a scale of at least 1")
    if getattr(args, "likelihood", False) and args.cfg_scale != 1:
        raise ValueError("--likelihood is the unguided model's: pass --cfg-scale 1 (SiT asserts it too)")
    transport = create_transport(args.path_type, args.prediction, args.loss_weight, args.train_eps, args.sample_eps)
    if args.mode == "ODE":
        options = dict(sampling_method=args.sampling_method, atol=args.atol, rtol=args.rtol, reverse=args.reverse)
    else:
        options = dict(sampling_method=args.sampling_method, diffusion_form=args.diffusion_form,
                       diffusion_norm=args.diffusion_norm, last_step_kind=args.last_step,
                       last_step_size=args.last_step_size)
    return dict(mode=args.mode, transport=transport, num_steps=args.num_sampling_steps, cfg_scale=args.cfg_scale,
                num_classes=cfg["num_classes"], noise_schedule=cfg.get("noise_schedule", "linear"), **options)


def sampler_name(args: argparse.Namespace) -> str:
    """The sampler part of SiT's names: mode, steps, method, and for the SDE its diffusion form and last step."""
    name = f"{args.mode}-{args.num_sampling_steps}-{args.sampling_method}"
    if args.mode == "SDE":
        name += f"-{args.diffusion_form}-{args.last_step}-{args.last_step_size}"
    return name


def sit_sample_name(args: argparse.Namespace) -> str:
    """SiT's ``sample_ddp.py`` folder (and ``.npz``) name: model, checkpoint, cfg, per-process batch, then the
    sampler (``sampler_name``)."""
    ckpt = Path(args.ckpt).name.replace(".pt", "") if args.ckpt else "pretrained"
    return (f"{args.model.replace('/', '-')}-{ckpt}-cfg-{args.cfg_scale}-{args.per_proc_batch_size}-"
            f"{sampler_name(args)}")


def manifest_entry(settings: dict) -> dict:
    """The sampling settings as a sample folder's manifest records them (the transport by its parts)."""
    transport = settings["transport"]
    return {**{k: v for k, v in settings.items() if k != "transport"}, "path_type": transport.path.name,
            "prediction": transport.prediction, "sample_eps": transport.sample_eps}
