"""REPA / REG's ``generate.py``: distributed sampling to ``.npz``, then (optionally) the evaluator.

  torchrun --nproc_per_node=8 generate.py --model SiT-XL/2 --ckpt exps/reg/checkpoints/4000000.pt \\
      --mode sde --num-steps 250 --cfg-scale 2.3 --cls-cfg-scale 2.3 --guidance-high 0.85 \\
      --num-fid-samples 50000 --per-proc-batch-size 64 --ref-batch VIRTUAL_imagenet256_labeled.npz

The same run as ``sample_ddp.py`` (one implementation: PNG folder, exact-N ``.npz``, per-batch
seeds, resume by skipping written images) with REPA / REG's flag names and defaults (``--mode``
ode, 50 steps, cfg 1.5; ``--mode`` defaults to sde for a REG checkpoint, as in REG). The model configuration comes from the checkpoint: its ``args`` where present (REG's and
ours), the weights themselves for the projectors and the class token (REPA's raw ``last.pt``);
``--projector-embed-dims`` and ``--cls`` are checked against them. With ``--ref-batch`` the
samples are scored with ``evaluations/evaluator.py`` (FID, sFID, IS, precision, recall); with
``--proxy`` (built-in dataset) by the proxy classifier; the metrics go to ``{sample folder}.json``.
"""

from __future__ import annotations

import argparse

import sample_ddp
from training.cli import first_paragraph, run_cli
from training.sampling import add_eval_args, add_sampling_args


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_sampling_args(p, repa_names=True, cfg_scale=1.5, num_steps=50, model_default="SiT-XL/2",
                      vae_default="ema",
                      sampler_default="ode (REPA), sde for REG checkpoints, ddpm for DiT checkpoints")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--num-fid-samples", type=int, default=50_000)
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    add_eval_args(p)
    args = p.parse_args(argv)
    if args.ckpt is None:
        p.error("--ckpt is required: a REPA / REG / train.py checkpoint")
    args.default_vae, args.default_model = "ema", "SiT-XL/2"  # REPA's last.pt carries no args
    args.flow_default = "ode"  # REPA's generate.py; REG checkpoints: sde, as REG's
    return args


main = sample_ddp.main


if __name__ == "__main__":
    run_cli(main, parse_args())
