"""REPA / REG / REPA-E's ``generate.py``: distributed sampling to ``.npz``, then (optionally) the evaluator.

  torchrun --nproc_per_node=8 generate.py --model SiT-XL/2 --ckpt exps/reg/checkpoints/4000000.pt \\
      --mode sde --num-steps 250 --cfg-scale 2.3 --cls-cfg-scale 2.3 --guidance-high 0.85 \\
      --num-fid-samples 50000 --per-proc-batch-size 64 --ref-batch VIRTUAL_imagenet256_labeled.npz
  torchrun --nproc_per_node=8 generate.py --exp-path exps/sit-xl-repae --train-steps 400000 --mode sde \\
      --num-steps 250 --cfg-scale 2.2 --guidance-high 0.65 --pproc-batch-size 64       # REPA-E (its tuned VAE decodes)

The same run as ``sample_ddp.py`` (one implementation: PNG folder, exact-N ``.npz``, per-batch
seeds, resume by skipping written images) with REPA / REG's flag names and defaults (``--mode``
ode, 50 steps, cfg 1.5; ``--mode`` defaults to sde for a REG checkpoint, as in REG). The model
configuration comes from the checkpoint: its ``args`` where present (REG's, REPA-E's and ours; a
REPA-E checkpoint also brings its tuned VAE and latent statistics), the weights themselves for the projectors and the class token (REPA's raw ``last.pt``);
``--projector-embed-dims`` and ``--cls`` are checked against them. With ``--ref-batch`` the
samples are scored with ``evaluations/evaluator.py`` (FID, sFID, IS, precision, recall); with
``--proxy`` (built-in dataset) by the proxy classifier; the metrics go to ``{sample folder}.json``.
The ``.npz`` is also copied to the original's name (the latest run's): REPA's
``{model}-{ckpt}-size-{res}-vae-{vae}-cfg-{cfg}-seed-{seed}-{mode}.npz``, REG's with ``-{guidance-high}-{cls-cfg}``
appended for a class-token checkpoint, REPA-E's ``{exp-name}_{step:07d}_cfg{cfg}-{low}-{high}.npz`` with
``--exp-path``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sample_ddp
from common.cli import first_paragraph, run_cli, use_local_rank
from evaluations.sampling_cli import add_eval_args, add_sampling_args


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_sampling_args(p, repa_names=True, cfg_scale=1.5, num_steps=50, model_default="SiT-XL/2",
                      vae_default="ema",
                      sampler_default="ode (REPA), sde for REG checkpoints, ddpm for DiT checkpoints")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", "--pproc-batch-size", dest="per_proc_batch_size", type=int, default=32)
    p.add_argument("--exp-path", type=str, default=None, help="REPA-E: a run folder; with --train-steps, samples "
                   "its checkpoints/{train-steps:07d}.pt")
    p.add_argument("--train-steps", type=int, default=None, help="REPA-E: the step of the checkpoint in --exp-path")
    add_eval_args(p)
    args = p.parse_args(argv)
    if (args.exp_path is None) != (args.train_steps is None):
        p.error("--exp-path and --train-steps go together (REPA-E): the run folder and the checkpoint's step")
    if args.exp_path is not None:
        if args.ckpt is not None:
            p.error("pass either --ckpt or --exp-path with --train-steps, not both")
        args.ckpt = str(Path(args.exp_path) / "checkpoints" / f"{args.train_steps:07d}.pt")
    if args.ckpt is None:
        p.error("--ckpt is required (or REPA-E's --exp-path and --train-steps): a REPA / REG / REPA-E / train.py "
                "checkpoint")
    args.default_vae, args.default_model = "ema", "SiT-XL/2"  # REPA's last.pt carries no args
    args.flow_default = "ode"  # REPA's generate.py; REG checkpoints: sde, as REG's
    args.script = "generate.py"  # its .npz is also written under REPA's, REG's or REPA-E's name
    use_local_rank(args)
    return args


main = sample_ddp.main


if __name__ == "__main__":
    run_cli(main, parse_args())
