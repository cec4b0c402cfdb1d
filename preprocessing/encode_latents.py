"""Encode an image folder (or the built-in dataset) once into VAE latents, so training skips the VAE.

  python preprocessing/encode_latents.py --data-path /data/imagenet/train --image-size 256 --vae ema \
      --output latents/imagenet256-ema
  torchrun --nproc_per_node=8 preprocessing/encode_latents.py ...     # shards the work across GPUs
  python train.py --model DiT-XL/2 --data-path latents/imagenet256-ema

Stores the posterior mean and std of every image and of its horizontal flip (float16), so
training keeps the random flip and draws a fresh latent sample each step (``imagedata/latents.py``).
The manifest is written last: an interrupted run leaves no usable (half) cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402
from common.setup import setup_accelerator  # noqa: E402
from imagedata import build_dataset, resolve_dataset_kind  # noqa: E402
from imagedata.latents import FORMAT, MANIFEST  # noqa: E402
from models.vae import load_vae  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--data-path", type=str, default=None)
    p.add_argument("--dataset", choices=["folder", "builtin"], default=None)
    p.add_argument("--num-images", type=int, default=None, help="encode only the first N (default: all; "
                   "the built-in dataset: 10,000)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--vae", type=str, default="ema")
    p.add_argument("--output", type=str, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4)
    return p.parse_args(argv)


@torch.no_grad()
def main(args: argparse.Namespace) -> None:
    if args.image_size % 8 != 0:
        raise ValueError(f"--image-size {args.image_size} is not divisible by 8")
    if args.vae == "none":
        raise ValueError("--vae none has no latents to cache; train on the images directly")
    for name in ("num_images", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    kind = resolve_dataset_kind(args.dataset, args.data_path)
    if kind == "latents":
        raise ValueError(f"--data-path {args.data_path} is already a latent cache; pass an image folder")
    # The built-in set is rendered up front: build only the images to encode.
    builtin_count = (args.num_images or 10_000) if kind == "builtin" else None
    dataset = build_dataset(kind, args.data_path, args.image_size, args.num_classes, num_images=builtin_count)
    count = len(dataset) if args.num_images is None else min(args.num_images, len(dataset))
    out = Path(args.output)
    accelerator = setup_accelerator()
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    codec = load_vae(args.vae, device)
    if args.image_size % codec.downsample != 0:
        raise ValueError(f"--image-size {args.image_size} is not divisible by the VAE's downsampling "
                         f"factor {codec.downsample}")
    size = args.image_size // codec.downsample
    shape = (count, 2, 2 * codec.latent_channels, size, size)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        np.lib.format.open_memmap(out / "moments.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        np.save(out / "labels.npy", np.zeros(count, dtype=np.int64))
    accelerator.wait_for_everyone()
    moments = np.load(out / "moments.npy", mmap_mode="r+")
    labels = np.zeros(count, dtype=np.int64)
    mine = list(range(rank, count, world))
    loader = DataLoader(Subset(dataset, mine), batch_size=args.batch_size, num_workers=args.num_workers)
    done = 0
    for x, y in tqdm(loader, disable=not accelerator.is_main_process, desc="encoding", dynamic_ncols=True):
        x = x.to(device)
        both = torch.cat([x, x.flip(-1)])
        mean, std = codec.moments(both)
        m = torch.cat([mean, std], dim=1).float().cpu().numpy().astype(np.float16)
        idx = mine[done: done + len(x)]
        moments[idx, 0] = m[: len(x)]
        moments[idx, 1] = m[len(x):]
        labels[idx] = y.numpy()
        done += len(x)
    moments.flush()
    all_labels = accelerator.reduce(torch.from_numpy(labels).to(device), reduction="sum").cpu().numpy()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        np.save(out / "labels.npy", all_labels)
        manifest = {"format": FORMAT, "count": count, "vae": args.vae, "image_size": args.image_size,
                    "scale": codec.scale, "latent_shape": [codec.latent_channels, size, size],
                    "num_classes": args.num_classes, "source": str(args.data_path or "builtin")}
        tmp = out / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(out / MANIFEST)
        print(f"encoded {count:,} images (and their flips) into {out}")


if __name__ == "__main__":
    run_cli(main, parse_args())
