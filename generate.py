"""REPA / REG's ``generate.py``: distributed sampling to ``.npz``, then (optionally) the evaluator.

  torchrun --nproc_per_node=8 generate.py --model SiT-XL/2 --ckpt exps/reg/checkpoints/4000000.pt \\
      --mode sde --num-steps 250 --cfg-scale 2.3 --cls-cfg-scale 2.3 --guidance-high 0.85 \\
      --num-fid-samples 50000 --per-proc-batch-size 64 --ref-batch VIRTUAL_imagenet256_labeled.npz

The same run as ``sample_ddp.py`` (one implementation: PNG folder, exact-N ``.npz``, per-batch
seeds, resume by skipping written images) with REPA / REG's flag names and defaults (``--mode``
ode, 50 steps, cfg 1.5; ``--mode`` defaults to sde for a REG checkpoint, whose class token has no
ODE). The model configuration comes from the checkpoint: its ``args`` where present (REG's and
ours), the weights themselves for the projectors and the class token (REPA's raw ``last.pt``);
``--projector-embed-dims`` and ``--cls`` are checked against them. With ``--ref-batch`` the
samples are scored with ``evaluations/evaluator.py`` (FID, sFID, IS, precision, recall); with
``--proxy`` (built-in dataset) by the proxy classifier; the metrics go to ``{sample folder}.json``.
"""

from __future__ import annotations

import argparse

import sample_ddp
from training.cli import first_paragraph, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--ckpt", type=str, required=True, help="a REPA / REG / train.py checkpoint (EMA weights used)")
    p.add_argument("--model", type=str, default=None, help="default: the checkpoint's args, else SiT-XL/2")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--resolution", "--image-size", dest="image_size", type=int, default=None)
    p.add_argument("--vae", type=str, default=None, help="ema | mse | none | folder | hub id (default: ema)")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--num-fid-samples", type=int, default=50_000)
    p.add_argument("--mode", "--sampler", dest="sampler", choices=["ode", "sde", "ddpm", "ddim"], default=None,
                   help="default: ode (REPA), sde for REG checkpoints, ddpm for DiT checkpoints")
    p.add_argument("--num-steps", "--num-sampling-steps", dest="num_sampling_steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (default 0; DiT checkpoints, --mode ddim)")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    sample_ddp.add_flow_args(p)
    sample_ddp.add_eval_args(p)
    args = p.parse_args(argv)
    args.default_vae, args.default_model = "ema", "SiT-XL/2"  # REPA's last.pt carries no args
    args.flow_default = "ode"  # REPA's generate.py; REG (no ODE for its class token): sde
    return args


main = sample_ddp.main


if __name__ == "__main__":
    run_cli(main, parse_args())
