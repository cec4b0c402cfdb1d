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
import json

import torch.distributed as dist

import sample_ddp
from training.cli import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", type=str, required=True, help="a REPA / REG / train.py checkpoint (EMA weights used)")
    p.add_argument("--model", type=str, default=None, help="default: the checkpoint's args, else SiT-XL/2")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--resolution", "--image-size", dest="image_size", type=int, default=None)
    p.add_argument("--vae", type=str, default=None, help="ema | mse | none | folder | hub id (default: ema)")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--num-fid-samples", type=int, default=50_000)
    p.add_argument("--mode", "--sampler", dest="sampler", choices=["ode", "sde", "ddpm", "ddim"], default=None,
                   help="default: ode (REPA), sde for REG checkpoints; ddpm/ddim for DiT checkpoints")
    p.add_argument("--num-steps", "--num-sampling-steps", dest="num_sampling_steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (DiT checkpoints)")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True)
    sample_ddp.add_flow_args(p)
    ev = p.add_argument_group("evaluation at the end")
    ev.add_argument("--ref-batch", type=str, default=None,
                    help="ADM reference batch or saved statistics (e.g. VIRTUAL_imagenet256_labeled.npz)")
    ev.add_argument("--proxy", action="store_true", help="built-in dataset: class accuracy and proxy FD")
    ev.add_argument("--inception-weights", type=str, default=None, help="the ported Inception weights file")
    args = p.parse_args(argv)
    args.default_vae, args.default_model = "ema", "SiT-XL/2"  # REPA's last.pt carries no args
    return args


def main(args: argparse.Namespace) -> None:
    npz = sample_ddp.main(args)
    if not (args.ref_batch or args.proxy):
        return
    from evaluations.evaluator import METRIC_NAMES, evaluate, proxy_scores

    rank = dist.get_rank() if dist.is_initialized() else 0
    metrics = {}
    if args.ref_batch:
        metrics.update(evaluate(args.ref_batch, str(npz), inception_weights=args.inception_weights,
                                progress=rank == 0))
    if args.proxy and rank == 0:
        metrics.update(proxy_scores(str(npz)))
    if rank == 0:
        for key, value in metrics.items():
            print(f"{METRIC_NAMES.get(key, key)}: {value}")
        out = npz.with_suffix(".json")
        out.write_text(json.dumps({"samples": str(npz), "reference": args.ref_batch, **metrics}, indent=2) + "\n")
        print(f"saved metrics to {out}")


if __name__ == "__main__":
    run_cli(main, parse_args())
