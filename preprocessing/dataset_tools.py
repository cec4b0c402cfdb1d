"""Build the REPA / REG training data: ``convert`` images to one square size, ``encode`` them with the SD-VAE.

  python preprocessing/dataset_tools.py convert --source=/data/imagenet/train \\
      --dest=/data/imagenet_vae/imagenet_256_vae --resolution=256x256 --transform=center-crop-dhariwal
  python preprocessing/dataset_tools.py encode --source=/data/imagenet_vae/imagenet_256_vae \\
      --dest=/data/imagenet_vae/vae-sd
  # imagedata/repa.py REPADataset("/data/imagenet_vae") reads both folders, as REG's --data-dir

``convert --dest DIR/images.h5`` writes the same PNGs into REPA-E's HDF5 layout (``imagedata/h5.py``).
``convert`` reads an ImageNet-style folder (``SOURCE/<class>/<image>``, labels = index of
the class folder in sorted order), a folder or ``.zip`` with its own ``dataset.json``, or
``builtin`` (the procedural dataset, ``--max-images`` required). Images are taken in sorted
path order, center-cropped as ADM does and stored as uncompressed PNG ``{idx//1000:05d}/
img{idx:08d}.png``. ``encode`` stores cat(mean, std) of the VAE posterior of each image
(input ``x / 127.5 - 1``) as float32 ``{idx//1000:05d}/img-mean-std-{idx:08d}.npy``. Both
write ``dataset.json`` ``{"labels": [[file name, label], ...]}`` last, and a ``.zip`` --dest
gets its name only when complete, so an interrupted run is never mistaken for a finished one.
The layout and flags are those of REPA / REG ``preprocessing/`` (from NVlabs/edm2).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402
from imagedata import h5 as h5_layout  # noqa: E402
from imagedata.folder import center_crop_arr, validate_image_folder  # noqa: E402
from imagedata.procedural import CLASS_NAMES, label_of, render_batch  # noqa: E402
from imagedata.repa import LABELS, Archive, is_image_name, read_labels, read_rgb  # noqa: E402
from models.vae import load_vae  # noqa: E402

BUILTIN_CHUNK = 256  # built-in images rendered at once


def parse_resolution(text: str) -> tuple[int, int]:
    """``"256x256"`` (or ``"256,256"``) -> ``(width, height)``."""
    match = re.fullmatch(r"(\d+)[x,](\d+)", text)
    if not match or 0 in (int(match[1]), int(match[2])):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 256x256, got {text!r}")
    return int(match[1]), int(match[2])


def open_archive(source: str) -> Archive:
    path = Path(source)
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip"):
        return Archive(path)
    if path.exists():
        raise ValueError(f"--source {source}: only folders and .zip archives can be read")
    raise ValueError(f"--source {source} does not exist")


def labelled_images(archive: Archive, need_labels_file: bool) -> list[tuple[str, int]]:
    """``(name, label)`` of every image in sorted-name order.

    Labels come from the source's ``dataset.json`` when it has one, else from the class
    folders (index in sorted name order; images outside a class folder are skipped).
    """
    if archive.exists(LABELS) or need_labels_file:
        remedy = (f"--source must be a finished `{Path(__file__).name} convert` output" if need_labels_file
                  else "fix or delete it (labels then come from the class folders)")
        table = read_labels(archive, remedy)
        images = sorted(n for n in archive.names() if is_image_name(n))
        if not images:
            raise ValueError(f"no images in {archive.path}; --source must be a convert output")
        missing = [n for n in images if n not in table]
        if missing:
            raise ValueError(f"{archive.where(LABELS)} has no label for {missing[0]} "
                             f"({len(missing):,} images without one)")
        return [(n, table[n]) for n in images]
    if not archive.is_zip:
        validate_image_folder(str(archive.path))  # one-line errors for a bad ImageNet-style folder
    images = sorted(n for n in archive.names() if is_image_name(n) and "/" in n)
    if not images:
        raise ValueError(f"no images in class folders of {archive.path}; expected SOURCE/<class name>/<image>")
    classes = {name: i for i, name in enumerate(sorted({n.split("/")[0] for n in images}))}
    return [(n, classes[n.split("/")[0]]) for n in images]


def builtin_images(count: int, resolution: int) -> Iterator[tuple[Image.Image, int]]:
    """The first ``count`` images of the built-in set (seed 0, all its classes), as ``build_dataset`` makes it."""
    num_classes = len(CLASS_NAMES)
    for start in range(0, count, BUILTIN_CHUNK):
        indices = np.arange(start, min(start + BUILTIN_CHUNK, count))
        for index, array in zip(indices, render_batch(indices, seed=0, resolution=resolution,
                                                      num_classes=num_classes)):
            yield Image.fromarray(array), label_of(index, num_classes)


class Destination:
    """A new or empty folder, a ``.zip`` or REPA-E's ``images.h5`` (``imagedata/h5.py``); the files are written as
    ``NAME.partial`` and renamed when finished.

    ``finish`` writes ``dataset.json`` last (and for ``.h5`` then the list of entries beside it);
    leaving the ``with`` block on an error deletes a partial zip or h5 (a partial folder stays,
    without ``dataset.json``).
    """

    def __init__(self, dest: str):
        if not dest:
            raise ValueError("--dest must not be empty")
        self.path, self.zip, self.h5 = Path(dest), None, None
        if self.path.suffix.lower() == ".h5":
            import h5py

            if self.path.exists():
                raise ValueError(f"--dest {dest} already exists; delete it (and its _h5.json) or choose another --dest")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.path.with_name(self.path.name + ".partial")
            self.h5 = h5py.File(self.partial, "w")
        elif self.path.suffix.lower() == ".zip":
            if self.path.exists():
                raise ValueError(f"--dest {dest} already exists; delete it or choose another --dest")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.path.with_name(self.path.name + ".partial")
            self.zip = zipfile.ZipFile(self.partial, "w", compression=zipfile.ZIP_STORED)
        elif self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--dest {dest} is a file; pass a folder or a .zip name")
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise ValueError(f"--dest {dest} is not empty (an earlier or interrupted run?); "
                             "delete it or choose another --dest")
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> None:
        if self.h5 is not None:
            h5_layout.write_bytes(self.h5, name, data)
            return
        if self.zip is not None:
            self.zip.writestr(name, data)
            return
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def finish(self, labels: list[list]) -> None:
        if self.h5 is not None:
            names = h5_layout.finish(self.h5, labels)
            self.h5.close()
            os.replace(self.partial, self.path)
            h5_layout.write_listing(self.path, names)
            return
        data = json.dumps({"labels": labels}).encode()
        if self.zip is not None:
            self.zip.writestr(LABELS, data)
            self.zip.close()
            os.replace(self.partial, self.path)
        else:
            temporary = self.path / (LABELS + ".tmp")
            temporary.write_bytes(data)
            temporary.replace(self.path / LABELS)

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and (self.zip is not None or self.h5 is not None):
            (self.zip or self.h5).close()
            self.partial.unlink(missing_ok=True)


def convert(args: argparse.Namespace) -> None:
    """Center-crop every source image to ``--resolution`` (ADM) and store it as an uncompressed PNG."""
    width, height = args.resolution
    if width != height:
        raise ValueError(f"--transform={args.transform} makes square images: pass --resolution={width}x{width}")
    if args.source == "builtin":
        if args.max_images is None:
            raise ValueError("--source builtin needs --max-images N (the built-in set is rendered on demand)")
        count, items = args.max_images, builtin_images(args.max_images, width)
    else:
        archive = open_archive(args.source)
        names = labelled_images(archive, need_labels_file=False)[: args.max_images]
        count, items = len(names), ((read_rgb(archive, name), label) for name, label in names)
    labels = []
    with Destination(args.dest) as out:
        for index, (image, label) in enumerate(tqdm(items, total=count, desc="convert", dynamic_ncols=True)):
            name = f"{index // 1000:05d}/img{index:08d}.png"
            png = io.BytesIO()
            center_crop_arr(image, width).save(png, format="png", compress_level=0)
            out.write(name, png.getvalue())
            labels.append([name, int(label)])
        out.finish(labels)
    print(f"converted {count:,} images into {args.dest}")


@torch.no_grad()
def encode(args: argparse.Namespace) -> None:
    """Store cat(mean, std) of q(z|x) for every image of a ``convert`` output (unscaled, float32)."""
    if args.vae == "none":
        raise ValueError("--vae none is pixel space: it has no posterior mean and std to store; "
                         "pass --vae ema, mse or a diffusers AutoencoderKL folder")
    if args.source == "builtin":
        raise ValueError("encode reads a convert output: run `convert --source builtin` first and encode its --dest")
    archive = open_archive(args.source)
    names = labelled_images(archive, need_labels_file=True)[: args.max_images]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    codec = load_vae(args.vae, device)
    labels, size = [], None
    with Destination(args.dest) as out, tqdm(total=len(names), desc="encode", dynamic_ncols=True) as bar:
        for start in range(0, len(names), args.batch_size):
            batch = names[start : start + args.batch_size]
            arrays = [np.asarray(read_rgb(archive, name)) for name, _ in batch]
            for (name, _), array in zip(batch, arrays):
                if size is None and (array.shape[0] % codec.downsample or array.shape[1] % codec.downsample):
                    raise ValueError(f"{archive.where(name)} is {array.shape[1]}x{array.shape[0]} pixels, not a "
                                     f"multiple of the VAE's downsampling {codec.downsample}; convert to another "
                                     "--resolution")
                size = size or array.shape[:2]
                if array.shape[:2] != size:
                    raise ValueError(f"{archive.where(name)} is {array.shape[1]}x{array.shape[0]} but the first "
                                     f"image is {size[1]}x{size[0]}; encode a convert output (one resolution)")
            x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            mean, std = codec.moments(x)
            moments = torch.cat([mean, std], dim=1).float().cpu().numpy()
            for offset, ((_, label), item) in enumerate(zip(batch, moments)):
                index = start + offset
                name = f"{index // 1000:05d}/img-mean-std-{index:08d}.npy"
                npy = io.BytesIO()
                np.save(npy, item)
                out.write(name, npy.getvalue())
                labels.append([name, int(label)])
            bar.update(len(batch))
        out.finish(labels)
    print(f"encoded {len(names):,} images into {args.dest}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="image folder, .zip or builtin -> square PNGs + dataset.json")
    c.add_argument("--source", required=True, metavar="PATH",
                   help="SOURCE/<class>/<image> folder, a folder or .zip with dataset.json, or 'builtin'")
    c.add_argument("--dest", required=True, metavar="PATH", help="new or empty folder, a .zip, or DIR/images.h5 "
                   "(REPA-E's layout)")
    c.add_argument("--max-images", type=int, default=None, metavar="INT", help="the first N images only")
    c.add_argument("--transform", choices=["center-crop-dhariwal"], default="center-crop-dhariwal",
                   help="ADM's center crop (the only transform kept from the original tool)")
    c.add_argument("--resolution", type=parse_resolution, required=True, metavar="WxH", help="e.g. 256x256")
    e = sub.add_parser("encode", help="convert output -> VAE posterior mean and std (.npy) + dataset.json")
    e.add_argument("--source", required=True, metavar="PATH", help="a convert output (folder or .zip)")
    e.add_argument("--dest", required=True, metavar="PATH", help="new or empty folder (vae-sd), or a .zip")
    e.add_argument("--max-images", type=int, default=None, metavar="INT", help="the first N images only")
    e.add_argument("--model-url", "--vae", dest="vae", default="mse", metavar="VAE",
                   help="ema | mse (stabilityai/sd-vae-ft-mse, the original's default) | hub id | diffusers folder")
    e.add_argument("--batch-size", type=int, default=32, metavar="INT", help="images per VAE call (the original uses 1)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ValueError("dataset_tools.py runs as one process; launch it with python, not torchrun")
    for flag in ("max_images", "batch_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    {"convert": convert, "encode": encode}[args.command](args)


if __name__ == "__main__":
    run_cli(main, parse_args())
