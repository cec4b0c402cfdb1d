"""Many samples for FID, in parallel: PNGs plus one ``.npz`` (``arr_0``: uint8 NHWC, exactly N images;
``arr_1``: their class labels) for the ADM evaluator. Any model: DiT (DDPM / DDIM) or SiT / REPA /
REG (Euler ODE / Euler-Maruyama SDE with a guidance interval; REG's class-token guidance).

  torchrun --nnodes=1 --nproc_per_node=N sample_ddp.py --model DiT-XL/2 --num-fid-samples 50000
  torchrun --nproc_per_node=N sample_ddp.py --ckpt exps/reg/checkpoints/4000000.pt --sampler sde \
      --num-sampling-steps 250 --cfg-scale 2.3 --cls-cfg-scale 2.3 --guidance-high 0.85
  torchrun --nproc_per_node=2 sample_ddp.py --ckpt results/000-DiT-Ti-4/checkpoints/0002000.pt   # CPU: gloo

Image ``i`` of batch ``b`` on rank ``r`` is file ``b * global_batch + i * world + r`` (official
layout). Each batch draws its noise and labels from its own seed (global seed, batch, rank),
so a re-run skips the PNGs already written and still produces the same set.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffusion.pipeline import DDPM_SAMPLERS, FLOW_SAMPLERS, generate
from models import MODEL_NAMES
from models.pretrained import build_for_sampling, resolve_sampling_config
from models.vae import load_vae
from training.cli import run_cli
from training.monitor import to_uint8
from training.setup import setup_accelerator
from training.visual import eval_sampler


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=str, default=None, help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--vae", type=str, default=None, help="ema | mse | none | folder | hub id (default: ema)")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--num-fid-samples", type=int, default=50_000)
    p.add_argument("--image-size", "--resolution", dest="image_size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--num-sampling-steps", "--num-steps", dest="num_sampling_steps", type=int, default=250)
    p.add_argument("--sampler", "--mode", dest="sampler", choices=[*DDPM_SAMPLERS, *FLOW_SAMPLERS], default=None,
                   help="default: ddpm for DiT, sde for SiT (the papers' FID samplers)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 = deterministic)")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ckpt", type=str, default=None)
    add_flow_args(p)
    add_eval_args(p)
    args = p.parse_args(argv)
    args.default_vae = "ema"
    return args


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Score the ``.npz`` at the end of the run (``generate.py`` shares them)."""
    ev = p.add_argument_group("evaluation at the end")
    ev.add_argument("--ref-batch", type=str, default=None, help="ADM reference batch or saved statistics "
                    "(e.g. VIRTUAL_imagenet256_labeled.npz): FID, sFID, IS, precision, recall")
    ev.add_argument("--proxy", action="store_true", help="built-in dataset: class accuracy and proxy FD")
    ev.add_argument("--inception-weights", type=str, default=None, help="the ported Inception weights file")


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


def add_flow_args(p: argparse.ArgumentParser) -> None:
    """REPA / REG sampling flags (SiT models; ``generate.py`` shares them)."""
    sit = p.add_argument_group("SiT / REPA / REG")
    sit.add_argument("--heun", action="store_true", help="Heun steps for the ODE sampler")
    sit.add_argument("--guidance-low", type=float, default=0.0, help="guide only for t >= this (t=1 is noise)")
    sit.add_argument("--guidance-high", type=float, default=1.0, help="guide only for t <= this")
    sit.add_argument("--cls-cfg-scale", type=float, default=1.5, help="REG: guidance of the class token")
    sit.add_argument("--path-type", choices=["linear", "cosine"], default=None, help="default: the checkpoint's")
    sit.add_argument("--encoder-depth", type=int, default=None, help="default: the checkpoint's args, else 8")
    sit.add_argument("--projector-embed-dims", type=str, default=None,
                     help="checked against the checkpoint's projectors (e.g. 768)")
    sit.add_argument("--cls", type=int, default=None, help="REG: class token size, checked against the checkpoint")
    sit.add_argument("--legacy", action="store_true", help="REPA's first checkpoints: their decoder_blocks.N become "
                     "blocks.(N + --encoder-depth)")


def sampling_settings(args, cfg: dict, model, codec) -> dict:
    """``diffusion.pipeline.generate`` arguments for this model family, and a name for them."""
    sampler = args.sampler or getattr(args, "default_sampler", eval_sampler)(model)
    kw = dict(sampler=sampler, num_steps=args.num_sampling_steps, cfg_scale=args.cfg_scale,
              num_classes=cfg["num_classes"])
    name = f"cfg-{args.cfg_scale}-{sampler}{args.num_sampling_steps}"
    if sampler in DDPM_SAMPLERS:
        kw.update(noise_schedule=cfg.get("noise_schedule", "linear"), eta=args.eta, clip_denoised=codec.bounded)
        name += f"-eta{args.eta}" if sampler == "ddim" else ""
    else:
        kw.update(heun=args.heun, guidance_low=args.guidance_low, guidance_high=args.guidance_high,
                  path_type=cfg["path_type"], cls_cfg_scale=args.cls_cfg_scale)
        name += f"{'-heun' if args.heun else ''}-{args.guidance_low}-{args.guidance_high}"
        name += f"-cls{args.cls_cfg_scale}" if getattr(model, "cls_token_dim", None) else ""
    return {"kwargs": kw, "name": name}


def batch_seed(global_seed: int, batch: int, world: int, rank: int) -> int:
    return global_seed * 1_000_003 + batch * world + rank


def batch_labels(seed: int, n: int, num_classes: int) -> torch.Tensor:
    """The labels of one batch: uniform classes from the batch's own seed."""
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def image_index(batch: int, i: int, global_batch: int, world: int, rank: int) -> int:
    return batch * global_batch + i * world + rank


def write_npz(folder: Path, n: int, labels: np.ndarray) -> Path:
    """Stack PNGs ``000000.png .. {n-1}.png`` into ``{folder}.npz`` (written atomically)."""
    images = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png").convert("RGB")) for i in
                       tqdm(range(n), desc="building .npz", dynamic_ncols=True)])
    path = folder.parent / (folder.name + ".npz")
    tmp = folder.with_name(folder.name + ".tmp.npz")
    np.savez(tmp, arr_0=images, arr_1=labels)
    tmp.replace(path)
    return path


@torch.no_grad()
def main(args: argparse.Namespace) -> None:
    if args.num_fid_samples <= 0 or args.per_proc_batch_size <= 0:
        raise ValueError("--num-fid-samples and --per-proc-batch-size must be positive")
    accelerator = setup_accelerator(allow_tf32=args.tf32)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    state_dict, cfg = resolve_sampling_config(args)
    codec = load_vae(cfg["vae"], device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    settings = sampling_settings(args, cfg, model, codec)

    ckpt_name = Path(cfg["ckpt"]).stem
    folder = Path(args.sample_dir) / (f"{cfg['model'].replace('/', '-')}-{ckpt_name}-size-{cfg['image_size']}-"
                                      f"vae-{cfg['vae']}-seed-{args.global_seed}-{settings['name']}")
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"saving .png samples at {folder}")
    accelerator.wait_for_everyone()

    n = args.per_proc_batch_size
    global_batch = n * world
    num_batches = math.ceil(args.num_fid_samples / global_batch)  # round up, as the official script does
    size = cfg["image_size"] // codec.downsample
    if accelerator.is_main_process:
        print(f"{num_batches * global_batch:,} samples in {num_batches} batches of {global_batch} "
              f"({world} process(es)); the .npz keeps the first {args.num_fid_samples:,}")
    for b in tqdm(range(num_batches), disable=not accelerator.is_main_process, desc="sampling", dynamic_ncols=True):
        indices = [image_index(b, i, global_batch, world, rank) for i in range(n)]
        if all((folder / f"{j:06d}.png").is_file() for j in indices):
            continue  # written by an earlier, interrupted run
        seed = batch_seed(args.global_seed, b, world, rank)
        torch.manual_seed(seed)
        noise = torch.randn(n, codec.latent_channels, size, size, device=device)
        y = batch_labels(seed, n, cfg["num_classes"]).to(device)
        z = generate(model, noise, y, **settings["kwargs"])
        for j, img in zip(indices, to_uint8(codec.decode(z))):
            tmp = folder / f"{j:06d}.tmp.png"
            Image.fromarray(img).save(tmp)
            tmp.replace(folder / f"{j:06d}.png")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        labels = np.empty(num_batches * global_batch, dtype=np.int64)
        for b in range(num_batches):
            for rk in range(world):
                labs = batch_labels(batch_seed(args.global_seed, b, world, rk), n, cfg["num_classes"])
                labels[[image_index(b, i, global_batch, world, rk) for i in range(n)]] = labs.numpy()
        labels = labels[: args.num_fid_samples]
        path = write_npz(folder, args.num_fid_samples, labels)
        print(f"saved .npz file to {path} [shape=({args.num_fid_samples}, {cfg['image_size']}, "
              f"{cfg['image_size']}, 3)]")
    accelerator.wait_for_everyone()
    npz = folder.parent / (folder.name + ".npz")
    if args.ref_batch or args.proxy:
        score(args, npz, cfg["num_classes"], accelerator.is_main_process)
    return npz


if __name__ == "__main__":
    run_cli(main, parse_args())
