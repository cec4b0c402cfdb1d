"""REPA-E's ``train_ldm_only.py``: a SiT (with REPA) on the cached latents of a frozen (e.g. end-to-end tuned) VAE.

  accelerate launch train_ldm_only.py --max-train-steps 4000000 --report-to wandb --allow-tf32 \\
      --mixed-precision fp16 --seed 0 --data-dir data --batch-size 256 --path-type linear --prediction v \\
      --weighting uniform --model SiT-XL/1 --checkpointing-steps 50000 --vae f16d32 \\
      --vae-ckpt pretrained/e2e-vavae-400k/e2e-vavae-400k.pt --vae-latents-name e2e-vavae-400k \\
      --enc-type dinov2-vit-b --proj-coeff 0.5 --encoder-depth 8 --output-dir exps --exp-name sit-xl-1-e2e-vavae

The data are REPA-E's layout: ``images.h5`` (the encoders' input for REPA's alignment) beside
``{vae-latents-name}.h5`` (``cache_latents.py``); each step draws z = mean + std eps. The SiT's latent
BatchNorm stays at ``<vae-ckpt>-latents-stats.pt``. Same engine and run folder as ``train_repae.py``.
"""

from __future__ import annotations

import argparse

from common.cli import first_paragraph, run_cli
from imagedata import class_names
from methods.repae_cli import LDM_RESUME_KEYS, build_ldm_method, open_dataset, run_spec, validate
from methods.repae_cli import parse_args as recipe_args
from training.engine import NonFiniteLoss
from training.fit import TrainData, fit


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__), ldm_only=True)


def main(args: argparse.Namespace) -> None:
    validate(args, ldm_only=True)

    def build(process):
        kind, dataset = open_dataset(args, ldm_only=True)
        return build_ldm_method(args, dataset, process.device), TrainData(
            dataset, kind, class_names(kind, args.num_classes, dataset))

    fit(build, run_spec(args, LDM_RESUME_KEYS))


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
