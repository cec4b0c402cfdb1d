"""REPA-E's ``cache_latents.py``: the posterior mean and std of every image of ``images.h5`` under a (tuned)
VAE, into ``{output-dir}/{vae-latents-name}.h5`` for ``train_ldm_only.py``.

  accelerate launch cache_latents.py --vae-arch f8d4 --vae-ckpt-path pretrained/e2e-sdvae/e2e-sdvae.pt \\
      --vae-latents-name e2e-sdvae --data-dir data --output-dir data --pproc-batch-size 128

Each entry ``00000/img-mean-std-00000000.npy`` holds float32 cat(mean, std) (2C, h, w) of image
``00000/img00000000.png`` (layout: ``imagedata/h5.py``). Every process encodes its share; the main one
writes. The file grows as ``{name}.h5.partial``: a re-run after an interruption encodes only the
images not in it yet, and the finished file gets its name and its ``{name}_h5.json`` last. The file's
attributes record the VAE (``vae_arch`` and the sha256 of ``--vae-ckpt-path``); a partial or finished
file of another VAE is refused, never completed or kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from common.cli import check_writable_dir, first_paragraph, run_cli
from common.setup import setup_accelerator
from imagedata import h5 as layout
from models.vae import VAE_models, load_vae_weights
from models.weights import sha256_of


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--vae-arch", choices=list(VAE_models), default="f16d32")
    p.add_argument("--vae-ckpt-path", type=str, default="pretrained/repae-invae-400k/repae-invae-400k.pt")
    p.add_argument("--vae-latents-name", type=str, default="repae-invae-400k")
    p.add_argument("--data-dir", type=str, default="data", help="holds images.h5 and images_h5.json")
    p.add_argument("--output-dir", type=str, default="data")
    p.add_argument("--pproc-batch-size", type=int, default=128, help="images per process and VAE call")
    return p.parse_args(argv)


def latent_name(image_name: str) -> str:
    """``00000/img00000000.png`` -> ``00000/img-mean-std-00000000.npy`` (REPA-E's names)."""
    folder, _, leaf = image_name.rpartition("/")
    leaf = leaf.replace("img", "img-mean-std-", 1).rsplit(".", 1)[0] + ".npy"
    return f"{folder}/{leaf}" if folder else leaf


@torch.no_grad()
def main(args: argparse.Namespace) -> Path:
    if args.pproc_batch_size <= 0:
        raise ValueError("--pproc-batch-size must be positive")
    dataset = layout.H5Images(args.data_dir)
    vae = VAE_models[args.vae_arch]()
    load_vae_weights(vae, args.vae_ckpt_path, "--vae-ckpt-path")
    check_writable_dir(args.output_dir, "--output-dir")
    target = Path(args.output_dir) / f"{args.vae_latents_name}.h5"
    partial = target.with_name(target.name + ".partial")
    identity = {"vae_arch": args.vae_arch, "vae_ckpt_sha256": sha256_of(args.vae_ckpt_path)}
    if layout.listing_path(target).is_file():
        check_same_vae(target, identity)
        print(f"{target} is complete ({layout.listing_path(target).name} exists): nothing to do")
        return target
    if partial.is_file():
        check_same_vae(partial, identity)
    accelerator = setup_accelerator()
    device, rank, world, is_main = (accelerator.device, accelerator.process_index, accelerator.num_processes,
                                    accelerator.is_main_process)
    vae = vae.to(device).eval()
    h5 = None
    if is_main:
        import h5py

        target.parent.mkdir(parents=True, exist_ok=True)
        h5 = h5py.File(partial, "a")
        h5.attrs.update(identity)
    done = set(gather_object([sorted(_entries(h5)) if is_main else []])[0] if world > 1 else _entries(h5))
    todo = [i for i, name in enumerate(dataset.names) if latent_name(name) not in done]
    if is_main and done:
        print(f"{partial}: {len(done):,} latents already there, {len(todo):,} to go")
    mine = todo[rank::world]
    rounds = -(-len(todo) // (args.pproc_batch_size * world))
    for r in tqdm(range(rounds), desc="encoding", disable=not is_main, dynamic_ncols=True):
        batch = mine[r * args.pproc_batch_size:(r + 1) * args.pproc_batch_size]
        items = []
        if batch:
            images = torch.stack([torch.from_numpy(dataset.image(i).copy()) for i in batch]).to(device)
            posterior = vae.encode(images.float() / 127.5 - 1)
            moments = torch.cat([posterior.mean, posterior.std], dim=1).float().cpu().numpy()
            items = [(latent_name(dataset.names[i]), m) for i, m in zip(batch, moments)]
        for name, moments in gather_object(items) if world > 1 else items:
            if is_main and name not in done:
                layout.write_entry(h5, name, moments.astype(np.float32))
                done.add(name)
        if is_main:
            h5.flush()
    if is_main:
        labels = [[latent_name(n), int(y)] for n, y in zip(dataset.names, dataset.labels)]
        names = layout.finish(h5, labels)
        h5.close()
        partial.replace(target)
        layout.write_listing(target, names)
        print(f"cached {len(dataset):,} latents ({json.dumps(list(moments_shape(target, labels[0][0])))}) into {target}")
    accelerator.wait_for_everyone()
    return target


def check_same_vae(path: Path, identity: dict) -> None:
    """One line when the latents in ``path`` (with entries) are not recorded as this VAE's."""
    if path.suffix == ".partial" and not _entries_in(path):
        return
    recorded = layout.vae_identity(path)
    if not recorded:
        raise ValueError(f"{path} does not record the VAE it was cached with; delete it to cache again, or pass "
                         "another --vae-latents-name")
    for key, flag in (("vae_arch", "--vae-arch"), ("vae_ckpt_sha256", "--vae-ckpt-path")):
        if recorded.get(key) != identity[key]:
            raise ValueError(f"{path} holds latents of another VAE ({key} {recorded.get(key)}, not {identity[key]} "
                             f"of {flag}); pass another --vae-latents-name, or delete it to cache again")


def _entries_in(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as h5:
        return bool(_entries(h5))


def _entries(h5) -> set[str]:
    names: list[str] = []
    if h5 is not None:
        h5.visititems(lambda name, obj: names.append(name) if name.endswith(".npy") else None)
    return set(names)


def moments_shape(path: Path, name: str) -> tuple:
    import h5py

    with h5py.File(path, "r") as h5:
        return tuple(h5[name].shape)


if __name__ == "__main__":
    run_cli(main, parse_args())
