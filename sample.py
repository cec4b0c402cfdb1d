"""Sample a grid of images from any model: an official DiT release, REPA / REG checkpoints, or train.py's.

  python sample.py --image-size 512 --seed 1                   # official DiT-XL/2 512x512
  python sample.py --model DiT-L/4 --image-size 256 --ckpt /path/to/model.pt
  python sample.py --ckpt results/000-DiT-Ti-4/checkpoints/0002000.pt --sampler ddim --num-sampling-steps 50
  python sample.py --model SiT-XL/2 --ckpt last.pt --sampler ode --num-sampling-steps 50   # REPA
  python sample.py --ckpt results/000-UNet/checkpoints/0100000.pt --samples 4         # U-Net: 4 per class
  python sample.py --ckpt DiT-XL-2-256x256.pt --sampler ode --heun --num-sampling-steps 25   # any model, any sampler
  python sample.py ODE --image-size 256 --seed 1              # SiT's command line: its release, dopri5
  python sample.py SDE --ckpt last.pt --model SiT-XL/2 --diffusion-form sigma --last-step Mean
  python sample.py --ckpt results/000-DMD2-diffusers/checkpoints/0002000.pt --prompt "a photo of a cat"
Writes ``sample.png`` (or ``--output``). A first argument ``ODE`` or ``SDE`` is SiT's mode
(``evaluations/sit_cli.py``); ``--likelihood`` then also writes ``sample-likelihood.json``. ``--prompt`` or
``--prompts`` samples a DMD2 text-to-image generator (``evaluations/prompt_cli.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.cli import first_paragraph, run_cli, use_local_rank
from common.monitor import row_labels, save_grid
from common.setup import enable_tf32
from diffusion.pipeline import generate, generate_sit, sit_likelihood
from diffusion.sit_samplers import bits_per_dim
from evaluations.prompt_cli import add_prompt_args, prompt_main
from evaluations.sampling_cli import add_sampling_args, check_sampling_args, choose_sampler, sampling_settings
from evaluations.sit_cli import add_sit_args, sit_query, sit_sampling, split_mode
from imagedata import class_names
from models.pretrained import build_for_sampling, load_codec, resolve_sampling_config, sampling_config

IMAGENET_DEMO_CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]  # official sample.py


def parse_args(argv=None) -> argparse.Namespace:
    mode, argv = split_mode(sys.argv[1:] if argv is None else list(argv))
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    if mode is not None:
        add_sit_args(p, mode, "sample.py")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--output", type=str, default="sample.png")
        return p.parse_args(argv, argparse.Namespace(mode=mode))
    add_sampling_args(p, repa_names=False, cfg_scale=4.0, num_steps=250, model_default="DiT-XL/2 (official weights, downloaded without --ckpt)",
                      vae_default="mse",
                      sampler_default="ddpm for DiT and the U-Net, ode for SiT / REPA, sde for REG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-labels", type=int, nargs="+", default=None,
                   help="default: the official eight ImageNet classes, or the first classes of the checkpoint")
    p.add_argument("--samples", type=int, default=1,
                   help="samples of each class in --class-labels; the grid then has one row per class")
    p.add_argument("--output", type=str, default="sample.png")
    add_prompt_args(p)
    args = p.parse_args(argv)
    args.default_vae, args.flow_default, args.mode = "mse", "ode", None
    use_local_rank(args)
    return args


def demo_labels(num_classes: int) -> list[int]:
    """The official eight ImageNet classes, or the first classes of a smaller model."""
    return IMAGENET_DEMO_CLASSES if num_classes == 1000 else list(range(min(num_classes, 16)))


@torch.no_grad()
def sit_main(args: argparse.Namespace) -> None:
    """SiT's ``sample.py``: its eight classes, the batch doubled for guidance, a grid of four columns."""
    check_sampling_args(args)
    torch.manual_seed(args.seed)
    enable_tf32()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state_dict, cfg = sampling_config(sit_query(args))
    settings = sit_sampling(args, cfg)
    codec = load_codec(cfg, device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    labels = demo_labels(cfg["num_classes"])
    size = cfg["image_size"] // codec.downsample
    noise = torch.randn(len(labels), codec.latent_channels, size, size, device=device)
    y = torch.tensor(labels, device=device)
    z = generate_sit(model, noise, y, double=True, progress=True, **settings)
    save_grid(codec.decode(z), args.output, nrow=4)
    print(f"saved {len(labels)} samples of {cfg['model']} ({cfg['ckpt']}, SiT {args.mode}) to {args.output}")
    if getattr(args, "likelihood", False):
        options = {k: settings[k] for k in ("sampling_method", "atol", "rtol")}
        logp = sit_likelihood(model, z, y, transport=settings["transport"], num_steps=args.num_sampling_steps,
                              noise_schedule=settings["noise_schedule"], **options)
        out = Path(args.output).with_name(Path(args.output).stem + "-likelihood.json")
        bpd = bits_per_dim(logp, z[0].numel())
        out.write_text(json.dumps({"classes": labels, "logp_nats": logp.tolist(), "bits_per_dim": bpd.tolist(),
                                   "dims": z[0].numel(), "space": "the model's latents"}, indent=2) + "\n")
        print(f"saved the samples' log-likelihood (mean {bpd.mean():.4f} bits per dimension) to {out}")


@torch.no_grad()
def main(args: argparse.Namespace) -> None:
    if args.mode is not None:
        return sit_main(args)
    if args.prompt or args.prompts:
        return prompt_main(args)
    check_sampling_args(args)
    torch.manual_seed(args.seed)
    enable_tf32()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state_dict, cfg = resolve_sampling_config(args)
    args.sampler = choose_sampler(args, cfg)
    codec = load_codec(cfg, device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    labels = args.class_labels or demo_labels(cfg["num_classes"])
    bad = [c for c in labels if not 0 <= c < cfg["num_classes"]]
    if bad:
        raise ValueError(f"--class-labels {bad} outside 0..{cfg['num_classes'] - 1}")
    labels = [c for c in labels for _ in range(args.samples)]
    settings = sampling_settings(args, cfg, codec)
    size = cfg["image_size"] // codec.downsample
    noise = torch.randn(len(labels), codec.latent_channels, size, size, device=device)
    y = torch.tensor(labels, device=device)
    z = generate(model, noise, y, progress=True, **settings["kwargs"])
    nrow = args.samples if args.samples > 1 else 4
    rows = row_labels(labels, nrow, class_names(cfg["dataset"], cfg["num_classes"])) if args.samples > 1 else None
    save_grid(codec.decode(z), args.output, nrow=nrow, row_labels=rows)
    print(f"saved {len(labels)} samples of {cfg['model']} ({cfg['ckpt']}) to {args.output}")


if __name__ == "__main__":
    run_cli(main, parse_args())
