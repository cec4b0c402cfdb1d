"""REPA-E: train the VAE and a SiT end to end (VAE + discriminator + SiT, three optimizers, one step each).

  accelerate launch train_repae.py --max-train-steps 400000 --report-to wandb --allow-tf32 \\
      --mixed-precision fp16 --seed 0 --data-dir data --output-dir exps --batch-size 256 --path-type linear \\
      --prediction v --weighting uniform --model SiT-XL/2 --checkpointing-steps 50000 \\
      --loss-cfg-path configs/l1_lpips_kl_gan.yaml --vae f8d4 --vae-ckpt pretrained/sdvae/sdvae-f8d4.pt \\
      --disc-pretrained-ckpt pretrained/sdvae/sdvae-f8d4-discriminator-ckpt.pt --enc-type dinov2-vit-b \\
      --proj-coeff 0.5 --encoder-depth 8 --vae-align-proj-coeff 1.5 --bn-momentum 0.1 --exp-name sit-xl-repae

The flags are REPA-E's. The story is train.py's: check the flags, the data and the checkpoint to resume;
build the VAE, the SiT, the discriminator and the losses (``methods/repae_cli.py``) into the method
(``methods/repae.py``); only then open the run folder; then the engine trains, checkpointing and
drawing EMA samples (decoded by the VAE being trained) on the way.
"""

from __future__ import annotations

import argparse

import torch

from common.cli import first_paragraph, run_cli
from imagedata import class_names
from methods.repae_cli import LDM_RESUME_KEYS, build_method, open_dataset, run_spec, validate
from methods.repae_cli import parse_args as recipe_args
from training.engine import NonFiniteLoss
from training.fit import TrainData, fit

RESUME_KEYS = (*LDM_RESUME_KEYS, "bn_momentum", "dataset")


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


def released(resume: dict) -> dict:
    """A checkpoint of REPA-E's own code (no RNG or data position) as the engine resumes it: the weights and
    the SiT's optimizer; REPA-E's ``opt_vae`` and ``opt_disc`` list their parameters in another order
    (LDM modules; the whole loss module), so those two start afresh."""
    if "rng" in resume:  # ours
        return resume
    state = {k: v for k, v in resume.items() if k not in ("opt_vae", "opt_disc")}
    state["args"] = vars(state["args"]) if isinstance(state["args"], argparse.Namespace) else state["args"]
    return state


def main(args: argparse.Namespace) -> None:
    validate(args)

    def build(process):
        kind, dataset = open_dataset(args)
        method = build_method(args, dataset, process.device)
        if process.world > 1 and process.device.type == "cuda":  # the latent BatchNorm sees the global batch
            method.modules["model"] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.modules["model"])
        return method, TrainData(dataset, kind, class_names(kind, args.num_classes, dataset))

    fit(build, run_spec(args, RESUME_KEYS, released))


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))

