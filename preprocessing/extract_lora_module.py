"""A LoRA generator's adapters as DMD2's LoRA file (DMD2's ``main/sdxl/extract_lora_module.py``, its flags).

  python preprocessing/extract_lora_module.py --original_model_path RUN/checkpoint_model_016000/pytorch_model.bin \\
      --output_model_path dmd2_sdxl_4step_lora_fp16.safetensors --lora_alpha 8 --fp16

``--original_model_path``: the generator of a ``train_dmd2.py --generator_lora`` run, as DMD2 saves it (a
``pytorch_model.bin`` of the UNet with peft's adapter names, which ``--checkpoint_layout dmd2`` writes too) or a
``train_dmd2.py`` checkpoint (its recorded ``--lora_alpha`` wins over the flag). The file has kohya's names
(``models/lora.py``), which diffusers' ``load_lora_weights`` and ``sample.py --ckpt FILE --model_id BASE`` read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.checkpoint import load_checkpoint  # noqa: E402
from common.cli import first_paragraph, run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--original_model_path", type=str, required=True)
    p.add_argument("--output_model_path", type=str, required=True)
    p.add_argument("--lora_rank", type=int, default=64, help="checked against the adapters' rank")
    p.add_argument("--lora_alpha", type=float, default=8)
    p.add_argument("--lora_dropout", type=float, default=0.0, help="accepted, as DMD2's script; a file has none")
    p.add_argument("--fp16", action="store_true", help="write float16 weights")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from models.lora import kohya_from_peft

    ckpt = load_checkpoint(args.original_model_path)
    alpha = args.lora_alpha
    if isinstance(ckpt, dict) and "sampling_record" in ckpt:  # a train_dmd2.py checkpoint
        alpha = float(ckpt["sampling_record"].get("lora_alpha", alpha))
        ckpt = ckpt["model"]
    lora = kohya_from_peft(ckpt, alpha, torch.float16 if args.fp16 else None)
    ranks = {v.shape[0] for k, v in lora.items() if k.endswith(".lora_down.weight")}
    if ranks != {args.lora_rank}:
        raise ValueError(f"--lora_rank {args.lora_rank}: the adapters in {args.original_model_path} have rank "
                         f"{sorted(ranks)}; pass that")
    Path(args.output_model_path).parent.mkdir(parents=True, exist_ok=True)
    part = Path(args.output_model_path).with_suffix(".part.safetensors")
    save_file(lora, str(part))
    part.replace(args.output_model_path)
    print(f"wrote {len(lora) // 3} LoRA layers (alpha {alpha}, rank {args.lora_rank}) to {args.output_model_path}")


if __name__ == "__main__":
    run_cli(main, parse_args())
