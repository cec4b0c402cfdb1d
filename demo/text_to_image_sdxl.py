"""DMD2's SDXL demo (``python -m demo.text_to_image_sdxl``, its flags), writing the images instead of serving a web UI.

  python -m demo.text_to_image_sdxl --checkpoint_path SDXL_CKPT_PATH --precision float16 --prompt "a photo of a cat"
  python -m demo.text_to_image_sdxl --num_step 1 --checkpoint_path SDXL_CKPT_PATH --conditioning_timestep 399

As DMD2's demo: the generator (DMD2's UNet weights, its LoRA file, or a ``train_dmd2.py`` checkpoint) on
``--model_id`` in ``--precision``, four steps [999, 749, 499, 249] or one from ``--conditioning_timestep``, unit
noise from ``--seed``, no guidance (``evaluations/prompt_cli.py``); ``--num_images`` images of the prompt in a grid at
``--output``.
"""

from __future__ import annotations

import argparse

from common.cli import first_paragraph, run_cli
from evaluations.prompt_cli import PRECISIONS, prompt_main

EXAMPLE = "a photo of a cat"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--latent_resolution", type=int, default=128, help="accepted, as DMD2's demo (the model's own)")
    p.add_argument("--image_resolution", type=int, default=1024, help="accepted, as DMD2's demo (the model's own)")
    p.add_argument("--num_train_timesteps", type=int, default=1000, help="accepted: the scheduler's 1000 steps")
    p.add_argument("--checkpoint_path", type=str, required=True, help="the generator's weights")
    p.add_argument("--model_id", type=str, default="stabilityai/stable-diffusion-xl-base-1.0")
    p.add_argument("--precision", choices=list(PRECISIONS), default="float32")
    p.add_argument("--conditioning_timestep", type=int, default=999)
    p.add_argument("--num_step", type=int, choices=[1, 4], default=4)
    p.add_argument("--revision", type=str, default=None)
    ours = p.add_argument_group("in place of the web UI")
    ours.add_argument("--prompt", action="append", default=None, help=f"default: {EXAMPLE!r}")
    ours.add_argument("--num_images", type=int, default=4)
    ours.add_argument("--seed", type=int, default=0)
    ours.add_argument("--output", type=str, default="text_to_image_sdxl.png")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    prompt_main(argparse.Namespace(
        ckpt=args.checkpoint_path, model_id=args.model_id, revision=args.revision, num_step=args.num_step,
        conditioning_timestep=args.conditioning_timestep, precision=args.precision,
        prompt=args.prompt or [EXAMPLE], prompts=None, samples=args.num_images, seed=args.seed, output=args.output))


if __name__ == "__main__":
    run_cli(main, parse_args())
