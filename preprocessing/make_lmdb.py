"""Write one of this repository's image datasets as a DMD2 ImageNet-layout LMDB (uint8 CHW images, int64 labels).

  python preprocessing/make_lmdb.py --source /data/imagenet/train --dest data/imagenet-64x64_lmdb
  python preprocessing/make_lmdb.py --source builtin --num-images 10000 --num-classes 10 --dest data/builtin_lmdb
  python train.py ... --data-path data/imagenet-64x64_lmdb        # read back by imagedata/lmdb.py LMDBImages

``--source`` is ``builtin`` (the procedural set; ``--num-images`` required), ``cifar10``
(``datasets/cifar10``) or an ImageNet-style folder (``SOURCE/<class>/<image>``, ADM center crop),
each made by ``data.build_dataset`` at ``--image-size`` and stored unflipped, in dataset order. The
keys are DMD2's (``images_{i}_data``, ``labels_{i}_data``, ``images_shape``, ``labels_shape``; see
``imagedata/lmdb.py``), so DMD2's own ``LMDBDataset`` reads the result too. The LMDB is written into
``DEST.partial`` and renamed to ``DEST`` when complete; an existing non-empty ``DEST`` is refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402
from imagedata import build_dataset, resolve_dataset_kind  # noqa: E402
from imagedata.lmdb import check_new_lmdb, new_lmdb  # noqa: E402

BATCH = 256  # images per LMDB transaction
WORKERS = min(8, os.cpu_count() or 1)  # loader processes that decode and crop an image folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--source", required=True, help="builtin, cifar10, or an image folder (ROOT/<class>/<image>)")
    p.add_argument("--dest", required=True, help="the LMDB folder to create")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10, help="classes of the built-in set")
    p.add_argument("--num-images", type=int, default=None, help="only the first N images (default: all)")
    return p.parse_args(argv)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] back to uint8 (exact for images that were uint8 / 127.5 - 1)."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def main(args: argparse.Namespace) -> None:
    dest = check_new_lmdb(args.dest, "--dest")
    if args.image_size < 1 or (args.num_images is not None and args.num_images < 1):
        raise ValueError("--image-size and --num-images must be positive")
    source = args.source
    data_path = None if source in ("builtin", "cifar10") else source
    if data_path is not None and not Path(data_path).exists():
        raise ValueError(f"--source {source} does not exist; pass builtin, cifar10 or an image folder")
    kind = resolve_dataset_kind(None if data_path else source, data_path)
    if kind not in ("builtin", "cifar10", "folder"):
        raise ValueError(f"--source {source} is a {kind!r} dataset, not images; pass builtin, cifar10 or an "
                         "image folder")
    if kind == "builtin" and args.num_images is None:
        raise ValueError("--source builtin renders as many images as asked: pass --num-images N")
    dataset = build_dataset(kind, data_path, args.image_size, args.num_classes, num_images=args.num_images)
    count = len(dataset) if args.num_images is None else min(args.num_images, len(dataset))
    loader = DataLoader(Subset(dataset, range(count)), batch_size=BATCH,
                        num_workers=0 if kind == "builtin" else WORKERS)

    with new_lmdb(dest, "--dest") as writer, tqdm(total=count, desc="writing", unit="img", dynamic_ncols=True) as bar:
        for x, y in loader:
            writer.append({"images": to_uint8(x), "labels": y.numpy().astype(np.int64)})
            bar.update(len(x))
    print(f"wrote {count:,} images ({args.image_size} px) and labels to {dest}")


if __name__ == "__main__":
    run_cli(main, parse_args())
