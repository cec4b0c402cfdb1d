"""REPA-E's ``save_vae_weights.py``: the tuned VAE, its latent statistics and the discriminator out of a
train_repae.py checkpoint, in REPA-E's released format.

  python save_vae_weights.py --repae-ckpt exps/sit-xl-repae/checkpoints/0400000.pt --vae-name e2e-sdvae \\
      --save-dir pretrained

Writes ``{save-dir}/{vae-name}/{vae-name}.pt`` (the VAE, LDM names), ``{vae-name}-latents-stats.pt``
(``latents_scale = running_var^-1/2`` and ``latents_bias = running_mean`` of the EMA SiT's latent
BatchNorm, shaped (1, C, 1, 1)) and ``{vae-name}-discriminator-ckpt.pt``: what ``--vae-ckpt``,
``--disc-pretrained-ckpt`` and ``cache_latents.py --vae-ckpt-path`` read. Each file is written atomically;
existing files are kept unless ``--overwrite`` is given, and ``--vae-name`` is a name, not a path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.checkpoint import load_checkpoint, save_atomic
from common.cli import check_plain_name, check_writable_dir, first_paragraph, run_cli

REPAE_KEYS = ("vae", "ema", "discriminator")
SUFFIXES = ("", "-latents-stats", "-discriminator-ckpt")  # the three files, {vae-name}{suffix}.pt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--repae-ckpt", type=str, required=True, help="a train_repae.py (or REPA-E) checkpoint")
    p.add_argument("--vae-name", type=str, default="e2e-vae", help="name of the saved VAE")
    p.add_argument("--save-dir", type=str, default="exps", help="the files go to {save-dir}/{vae-name}/")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier run with this name "
                   "(beyond REPA-E's flags, which overwrite silently)")
    return p.parse_args(argv)


def extract(ckpt: dict) -> dict[str, dict]:
    """``{suffix: state}`` of the three files."""
    missing = [k for k in REPAE_KEYS if k not in ckpt]
    if missing or "bn.running_var" not in ckpt.get("ema", {}):
        raise ValueError(f"not a REPA-E checkpoint: it lacks {', '.join(missing) or 'ema bn.running_var'} "
                         "(train_repae.py writes vae, ema with the latent BatchNorm, and discriminator)")
    mean, var = ckpt["ema"]["bn.running_mean"], ckpt["ema"]["bn.running_var"]
    shape = (1, mean.numel(), 1, 1)
    stats = {"latents_scale": var.rsqrt().view(shape), "latents_bias": mean.view(shape)}
    return dict(zip(SUFFIXES, (ckpt["vae"], stats, ckpt["discriminator"])))


def main(args: argparse.Namespace) -> list[Path]:
    check_plain_name(args.vae_name, "--vae-name")
    if not Path(args.repae_ckpt).is_file():
        raise ValueError(f"--repae-ckpt {args.repae_ckpt}: no such file")
    check_writable_dir(args.save_dir, "--save-dir")
    folder = Path(args.save_dir) / args.vae_name
    paths = {suffix: folder / f"{args.vae_name}{suffix}.pt" for suffix in SUFFIXES}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{existing[0]} exists ({len(existing)} of the VAE's {len(paths)} files); pass --overwrite "
                         "to replace them, or choose another --vae-name")
    files = extract(load_checkpoint(args.repae_ckpt))
    for suffix, state in files.items():
        save_atomic(state, paths[suffix])
        print(f"saved {paths[suffix]}")
    return list(paths.values())


if __name__ == "__main__":
    run_cli(main, parse_args())
