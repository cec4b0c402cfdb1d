"""What ``sample.py``, ``sample_ddp.py`` and ``generate.py`` share: their flags, the choice of sampler,
the settings handed to ``diffusion.pipeline.generate`` and the scoring of a finished ``.npz``.

Each script keeps its original's spelling and defaults (``add_sampling_args``): official DiT's
``--num-sampling-steps`` / ``--sampler`` / ``--image-size``, REPA's ``--num-steps`` / ``--mode`` /
``--resolution``; the other spelling is an alias. Any model can be sampled by any sampler; a flag
the chosen sampler cannot honour is refused in one line before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.cli import add_local_rank, require_positive
from diffusion.pipeline import DDPM_SAMPLERS, EDM_SAMPLER, FEW_STEP, FLOW_SAMPLERS, SAMPLERS, default_sampler
from models import MODEL_NAMES
from models.pretrained import SIT_PATH_TYPES

# EDM sampler flags (stochasticity, Algorithm 2) and their values when not given
EDM_FLAGS = {"S_churn": 0.0, "S_min": 0.0, "S_max": float("inf"), "S_noise": 1.0}
# flow-sampler flags and their values when not given
FLOW_FLAGS = {"heun": False, "guidance_low": 0.0, "guidance_high": 1.0, "cls_cfg_scale": 1.5}


def add_sampling_args(p: argparse.ArgumentParser, *, repa_names: bool, cfg_scale: float, num_steps: int,
                      vae_default: str, sampler_default: str, model_default: str) -> None:
    """The flags of every sampling script. ``repa_names``: REPA / REG spellings first (generate.py)."""
    def names(dit: str, repa: str) -> list[str]:
        return [repa, dit] if repa_names else [dit, repa]

    p.add_argument("--ckpt", type=str, default=None, help="a checkpoint of train.py, or an official / REPA / REG "
                   "release (EMA weights used)")
    p.add_argument("--model", type=str, default=None, help=f"default: the checkpoint's, else {model_default}; one of "
                   f"{', '.join(MODEL_NAMES)}")
    p.add_argument("--vae", type=str, default=None, help=f"ema | mse | none | folder | hub id (default: the "
                   f"checkpoint's, else {vae_default})")
    p.add_argument(*names("--image-size", "--resolution"), dest="image_size", type=int, default=None,
                   help="default: the checkpoint's")
    p.add_argument("--num-classes", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--cfg-scale", type=float, default=None, help=f"classifier-free guidance scale (1: none; default "
                   f"{cfg_scale}, and 1 for a distilled generator)")
    p.set_defaults(cfg_default=cfg_scale)
    p.add_argument("--cfg-channels", type=int, default=None, help="guide the first N channels only (default: "
                   "3 for DiT checkpoints, as official DiT; every channel otherwise)")
    p.add_argument(*names("--num-sampling-steps", "--num-steps"), dest="num_sampling_steps", type=int,
                   default=None, help=f"default {num_steps}; a distilled generator takes its own steps")
    p.set_defaults(num_steps_default=num_steps)
    p.add_argument(*names("--sampler", "--mode"), dest="sampler", choices=SAMPLERS, default=None,
                   help=f"any model with any sampler; default: {sampler_default}")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (default 0: deterministic); --sampler ddim only")
    p.add_argument("--guidance-low", type=float, default=None, help="guide only for t >= this (REPA's time "
                   "t = sigma / (1 + sigma), t=1 is noise; default 0)")
    p.add_argument("--guidance-high", type=float, default=None, help="guide only for t <= this (default 1)")
    edm = p.add_argument_group("the EDM sampler (--sampler edm; EDM's generate.py flags, ImageNet-64: --S_churn 40 "
                               "--S_min 0.05 --S_max 50 --S_noise 1.003)")
    for name, default in EDM_FLAGS.items():
        edm.add_argument(f"--{name}", type=float, default=None, help=f"default {default}")
    sit = p.add_argument_group("ODE / SDE samplers and SiT / REPA / REG checkpoints")
    sit.add_argument("--heun", action="store_true", default=None, help="Heun steps for the ODE sampler")
    sit.add_argument("--cls-cfg-scale", type=float, default=None, help="REG: guidance of the class token, "
                     "any sampler (default 1.5)")
    sit.add_argument("--path-type", type=lambda name: SIT_PATH_TYPES.get(name, name), choices=["linear", "cosine"],
                     default=None, help="the ODE / SDE sampler's path (default: a SiT checkpoint's own, else linear; "
                     "SiT's names Linear and GVP are linear and cosine)")
    sit.add_argument("--encoder-depth", type=int, default=None, help="default: the checkpoint's args, else 8")
    sit.add_argument("--projector-embed-dims", type=str, default=None,
                     help="checked against the checkpoint's projectors (e.g. 768)")
    sit.add_argument("--cls", type=int, default=None, help="REG: class token size, checked against the checkpoint")
    sit.add_argument("--legacy", action="store_true", help="REPA's first checkpoints: their decoder_blocks.N become "
                     "blocks.(N + --encoder-depth)")
    add_local_rank(p)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """``sample_ddp.py``'s and ``generate.py``'s: how many samples of which classes, and the scoring of the ``.npz``
    at the end of the run."""
    p.add_argument("--num-fid-samples", type=int, default=50_000)
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--class-balanced", action="store_true", help="image i gets class i %% num-classes (DMD2's "
                   "ImageNet evaluation, with --global-seed 10) instead of uniformly random classes")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    ev = p.add_argument_group("evaluation at the end")
    ev.add_argument("--ref-batch", type=str, default=None, help="ADM reference batch or saved statistics "
                    "(e.g. VIRTUAL_imagenet256_labeled.npz): FID, sFID, IS, precision, recall")
    ev.add_argument("--proxy", action="store_true", help="built-in dataset: class accuracy and proxy FD")
    ev.add_argument("--inception-weights", type=str, default=None, help="the ported Inception weights file")


def check_sampling_args(args) -> None:
    """Counts that must be positive, refused before anything is loaded or written."""
    require_positive(args, "num_sampling_steps", "per_proc_batch_size", "num_fid_samples", "samples", "cfg_channels")


def is_flow_config(cfg: dict) -> bool:
    return cfg["model"].startswith("SiT-")


def choose_sampler(args, cfg: dict) -> str:
    """``--sampler`` (``--mode``), or the script's default for the checkpoint's family: DDPM for DiT and
    the U-Net, ``args.flow_default`` for SiT / REPA, the SDE for REG.

    Any checkpoint samples with any sampler (REG's class token rides along). A flag the chosen
    sampler cannot honour is refused in one line, before anything is loaded or written: flags are
    never silently ignored.
    """
    flow = is_flow_config(cfg)
    reg = bool(cfg["model_kwargs"].get("cls_token_dim")) if flow else False
    if cfg.get("generator_sigmas"):
        return generator_sampler(args, cfg)
    if args.sampler == FEW_STEP:
        raise ValueError(f"--sampler {FEW_STEP} is how a distilled generator (train_dmd2.py) samples, and "
                         f"{cfg['ckpt']} is none: choose another sampler")
    if args.num_sampling_steps is None:
        args.num_sampling_steps = args.num_steps_default
    if args.cfg_scale is None:  # EDM's networks learned no null class: they sample unguided
        args.cfg_scale = 1.0 if cfg["model"] == "EDM" else args.cfg_default
    prediction = "x0" if cfg["model"] == "EDM" else "velocity" if flow else "eps"
    sampler = args.sampler or default_sampler(prediction, class_token=reg, flow=args.flow_default)
    if args.heun and sampler != "ode":
        raise ValueError(f"--heun is a step of the ODE sampler: it applies with --sampler ode, not {sampler}")
    if args.path_type is not None and sampler in DDPM_SAMPLERS:
        raise ValueError(f"--path-type chooses the ODE / SDE sampler's path; {sampler} follows the DDPM noise "
                         "schedule: leave it out")
    if args.cls_cfg_scale is not None and not reg:
        raise ValueError("--cls-cfg-scale guides REG's class token, which this checkpoint has not: leave it out")
    given = [f"--{name}" for name in EDM_FLAGS if getattr(args, name, None) is not None]
    if given and sampler != EDM_SAMPLER:
        raise ValueError(f"{' '.join(given)}: the EDM sampler's noise settings apply with --sampler edm, not {sampler}")
    if args.eta is not None and sampler != "ddim":
        raise ValueError(f"--eta is DDIM's noise level: it applies with --sampler ddim, not {sampler}")
    return sampler


# The flags of the other samplers, refused for a distilled generator (it samples with its own levels, unguided)
SAMPLER_FLAGS = {"num_sampling_steps": "--num-sampling-steps (--num-steps)", "eta": "--eta", "heun": "--heun",
                 "guidance_low": "--guidance-low", "guidance_high": "--guidance-high", "path_type": "--path-type",
                 "cls_cfg_scale": "--cls-cfg-scale", "cfg_channels": "--cfg-channels",
                 **{name: f"--{name}" for name in EDM_FLAGS}}


def generator_sampler(args, cfg: dict) -> str:
    """A distilled generator (``train_dmd2.py``) samples with its own steps only (``fewstep``), unguided: any
    flag of another sampler is refused in one line."""
    name = f"{cfg['ckpt']} is a distilled {len(cfg['generator_sigmas'])}-step generator (train_dmd2.py)"
    if args.sampler not in (None, FEW_STEP):
        raise ValueError(f"{name}: it samples with its own steps; leave out --sampler {args.sampler}")
    given = [flag for key, flag in SAMPLER_FLAGS.items() if getattr(args, key, None) is not None]
    if given:
        raise ValueError(f"{name}: it samples with its own noise levels, which {', '.join(given)} cannot change; "
                         "leave them out")
    args.cfg_scale = 1.0 if args.cfg_scale is None else args.cfg_scale
    if args.cfg_scale > 1.0:
        raise ValueError(f"{name} with the teacher's guidance built in: leave out --cfg-scale")
    return FEW_STEP


def sampling_settings(args, cfg: dict, codec) -> dict:
    """``diffusion.pipeline.generate`` arguments for ``args.sampler`` (see ``choose_sampler``), and a name
    for them (part of the sample folder's name)."""
    sampler, flow = args.sampler, is_flow_config(cfg)
    flags = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in FLOW_FLAGS.items()}
    steps = len(cfg["generator_sigmas"]) if sampler == FEW_STEP else args.num_sampling_steps
    kw = dict(sampler=sampler, num_steps=steps, cfg_scale=args.cfg_scale, num_classes=cfg["num_classes"])
    name = f"cfg-{args.cfg_scale}-{sampler}{steps}"
    interval = f"-{flags['guidance_low']}-{flags['guidance_high']}"
    reg = bool(cfg["model_kwargs"].get("cls_token_dim")) if flow else False
    if sampler == FEW_STEP:  # the generator's own levels, read through its teacher's parameterisation
        kw.update(noise_schedule=cfg.get("noise_schedule", "linear"), path_type=cfg.get("path_type") or "linear")
        return {"kwargs": kw, "name": name}
    if sampler == EDM_SAMPLER:
        churn = {k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in EDM_FLAGS.items()}
        kw.update(noise_schedule=cfg.get("noise_schedule", "linear"), path_type=cfg.get("path_type") or "linear",
                  guidance_low=flags["guidance_low"], guidance_high=flags["guidance_high"], **churn)
        name += "".join(f"-{k}{v}" for k, v in churn.items() if v != EDM_FLAGS[k]) + interval
    elif sampler in DDPM_SAMPLERS:
        eta = args.eta or 0.0
        kw.update(noise_schedule=cfg.get("noise_schedule", "linear"), eta=eta, clip_denoised=codec.bounded)
        name += f"-eta{eta}" if sampler == "ddim" else ""
        if args.guidance_low is not None or args.guidance_high is not None:
            kw.update(guidance_low=flags["guidance_low"], guidance_high=flags["guidance_high"])
            name += interval
        if flow:
            kw.update(path_type=cfg["path_type"], cls_cfg_scale=flags["cls_cfg_scale"] if reg else 0.0)
            name += f"-cls{flags['cls_cfg_scale']}" if reg else ""
    else:
        path = args.path_type or cfg.get("path_type") or "linear"
        kw.update(heun=flags["heun"], guidance_low=flags["guidance_low"], guidance_high=flags["guidance_high"],
                  path_type=path, cls_cfg_scale=flags["cls_cfg_scale"] if reg else 0.0)
        name += f"{'-heun' if flags['heun'] else ''}{interval}"
        name += f"-cls{flags['cls_cfg_scale']}" if reg else ""
        if not flow:
            kw.update(noise_schedule=cfg.get("noise_schedule", "linear"))
            name += f"-{path}"
    if args.cfg_channels is not None:
        kw.update(guided_channels=args.cfg_channels)
        name += f"-ch{args.cfg_channels}"
    return {"kwargs": kw, "name": name}


def original_npz_name(args, cfg: dict) -> str:
    """The name the original script would give this run's ``.npz`` (without the folder): official DiT's
    ``sample_ddp.py`` for ``sample_ddp.py``; for ``generate.py`` REPA-E's with ``--exp-path``, REG's for a
    checkpoint with a class token, else REPA's. Path separators in any part become ``-``."""
    ckpt = Path(cfg["ckpt"]).name.replace(".pt", "") if getattr(args, "ckpt", None) else "pretrained"
    flags = {k: default if getattr(args, k, None) is None else getattr(args, k) for k, default in FLOW_FLAGS.items()}
    if getattr(args, "script", None) == "generate.py" and getattr(args, "exp_path", None):
        name = (f"{Path(args.exp_path).name}_{str(args.train_steps).zfill(7)}_cfg{args.cfg_scale}-"
                f"{flags['guidance_low']}-{flags['guidance_high']}")
    else:
        name = (f"{cfg['model'].replace('/', '-')}-{ckpt}-size-{cfg['image_size']}-vae-{cfg['vae']}-"
                f"cfg-{args.cfg_scale}-seed-{args.global_seed}")
        if getattr(args, "script", None) == "generate.py":
            name += f"-{args.sampler}"
            if cfg.get("model_kwargs", {}).get("cls_token_dim"):
                name += f"-{flags['guidance_high']}-{flags['cls_cfg_scale']}"
    return name.replace("/", "-")


def score(args, npz: Path, num_classes: int, is_main: bool) -> None:
    """The evaluator on the samples just written (every process takes part in Inception features);
    the metrics are printed and saved next to the ``.npz`` as ``.json``."""
    from evaluations.evaluator import METRIC_NAMES, evaluate, proxy_scores

    metrics = {}
    if args.ref_batch:
        metrics.update(evaluate(args.ref_batch, str(npz), inception_weights=args.inception_weights,
                                progress=is_main))
    if args.proxy and is_main:
        metrics.update(proxy_scores(str(npz), num_classes))
    if is_main:
        for key, value in metrics.items():
            print(f"{METRIC_NAMES.get(key, key)}: {value}")
        out = npz.with_suffix(".json")
        out.write_text(json.dumps({"samples": str(npz), "reference": args.ref_batch, **metrics}, indent=2) + "\n")
        print(f"saved metrics to {out}")


__all__ = ["FLOW_FLAGS", "FLOW_SAMPLERS", "add_eval_args", "add_sampling_args", "check_sampling_args",
           "choose_sampler", "sampling_settings", "score"]
