"""A text-to-image generator as DMD2 releases its UNets (``dmd2_sdxl_4step_unet_fp16.bin``): the UNet's own state dict,
LoRA adapters merged, optionally float16, which diffusers' ``UNet2DConditionModel.load_state_dict``, DMD2's demo and
``sample.py --ckpt FILE --model_id BASE`` read.

  python preprocessing/export_dmd2_unet.py --ckpt RUN/checkpoints/0020000.pt --output dmd2_unet_fp16.bin --fp16

``--ckpt``: a ``train_dmd2.py`` / ``train_sd_ode.py`` checkpoint (a LoRA run's adapters merged at its recorded
``--lora_alpha``) or a DMD2 checkpoint folder / ``pytorch_model.bin`` (peft's adapters merged at ``--lora_alpha``).
Written atomically; the base model it belongs to is printed, since the file does not hold it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--ckpt", type=str, required=True, help="the generator")
    p.add_argument("--output", type=str, required=True, help="the .bin (torch.save) or .safetensors file to write")
    p.add_argument("--fp16", action="store_true", help="write float16 weights, as DMD2's released UNets")
    p.add_argument("--lora_alpha", type=float, default=8, help="a DMD2 folder of a LoRA run: the adapters' alpha")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from common.checkpoint import save_atomic
    from evaluations.prompt_cli import generator_weights

    if not Path(args.ckpt).exists():
        raise ValueError(f"--ckpt {args.ckpt} does not exist")
    weights, record = generator_weights(args.ckpt, args.lora_alpha)
    weights = {k: v.half() if args.fp16 and v.is_floating_point() else v for k, v in weights.items()}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        part = out.with_suffix(".part.safetensors")
        save_file({k: v.contiguous() for k, v in weights.items()}, str(part))
        part.replace(out)
    else:
        save_atomic(weights, out)
    base = (record or {}).get("sd_model", "the model it was distilled from")
    print(f"wrote the UNet ({len(weights)} tensors, {'float16' if args.fp16 else 'as trained'}) to {out}; sample it "
          f"on its base model: sample.py --ckpt {out} --model_id {base}")


if __name__ == "__main__":
    run_cli(main, parse_args())
