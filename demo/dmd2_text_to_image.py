"""The inputs and the report of ``make demo-dmd2-t2i``: DMD2's whole text-to-image path, offline, on a tiny Stable
Diffusion model with random weights (``models/tiny_sd.py``).

  python -m demo.dmd2_text_to_image prepare --out results/demo-dmd2-t2i
  python -m demo.dmd2_text_to_image report --out results/demo-dmd2-t2i

``prepare`` writes ``tiny-sd/`` (the random model, SD1.5's layout), ``prompts.txt`` ("a photo of a <class>" for the
10 built-in classes), ``shards/`` (built-in images at 64 px with their class prompts, as DMD2 keeps image shards:
the real data), ``refs/`` (other built-in images, the FD reference) and ``eval_prompts.txt`` (10 prompts a class).
``report`` writes ``report.md``: what ran, where its files are, the scores; it says, as this does, that the pictures
come from random weights: the demo shows the machinery, not DMD2's quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.cli import first_paragraph, run_cli

SHARD_IMAGES = 160  # built-in images a shard, two shards
REFERENCES = 100
PER_CLASS = 10  # evaluation prompts a class
RANDOM = ("Every picture here comes from a Stable Diffusion model with random weights (models/tiny_sd.py): the demo "
          "runs DMD2's text-to-image machinery end to end, offline; its images and scores say nothing about DMD2's "
          "quality.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("step", choices=["prepare", "report"])
    p.add_argument("--out", type=str, default="results/demo-dmd2-t2i")
    return p.parse_args(argv)


def builtin_uint8(count: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Built-in images ``start .. start + count`` at 64 px (uint8 NCHW) and their labels."""
    from imagedata import build_dataset

    data = build_dataset("builtin", None, 64, 10, num_images=start + count)
    items = [data[i] for i in range(start, start + count)]
    x = torch.stack([x for x, _ in items])
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy(), np.array([y for _, y in items])


def prepare(out: Path) -> None:
    from imagedata import class_names
    from models.tiny_sd import build_sd

    out.mkdir(parents=True, exist_ok=True)
    build_sd(out / "tiny-sd")
    prompts = [f"a photo of a {name}" for name in class_names("builtin", 10)]
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (out / "eval_prompts.txt").write_text("".join(f"{p}\n" for p in prompts for _ in range(PER_CLASS)))
    (out / "shards").mkdir(exist_ok=True)
    for k in range(2):
        images, labels = builtin_uint8(SHARD_IMAGES, k * SHARD_IMAGES)
        torch.save({"images": torch.from_numpy(images), "prompts": [prompts[y] for y in labels]},
                   out / "shards" / f"{k:03d}.pt")
    (out / "refs").mkdir(exist_ok=True)
    images, _ = builtin_uint8(REFERENCES, 2 * SHARD_IMAGES)
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(out / "refs" / f"{i:04d}.png")
    print(f"{out}: tiny-sd/ (random weights), prompts.txt, eval_prompts.txt, shards/ ({2 * SHARD_IMAGES} images), "
          f"refs/ ({REFERENCES} images)")


def report(out: Path) -> None:
    (run,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    stats = json.loads((run / "stats.json").read_text())
    rows = [f"| {Path(step).name} | {values.get('proxy_fd', float('nan')):.2f} |" for step, values in
            sorted(stats.items())]
    files = {"samples.png": "sample.py --prompts on the exported LoRA file, one image a prompt",
             "dmd2_lora.safetensors": "the generator's adapters in DMD2's LoRA file (extract_lora_module.py)",
             f"runs/{run.name}/": "the DMD2 run: checkpoints (ours and DMD2's checkpoint_model_*), grids, loss.png",
             "samples/": "sample_ddp.py --prompts: one PNG an evaluation prompt, the .npz",
             f"runs/{run.name}/stats.json": "evaluations.watch_text --proxy: each checkpoint's FD to refs/"}
    text = "\n".join([
        "# DMD2 text to image, offline (make demo-dmd2-t2i)", "", f"**{RANDOM}**", "",
        "The path: a tiny random SD1.5-layout model; VAE latents of built-in images and their class prompts "
        "(generate_vae_latents.py, create_lmdb_iterative.py); train_dmd2.py, four steps with backward simulation, "
        "the GAN head and LoRA adapters; the adapters exported as DMD2's LoRA file; sampled with prompts; scored.", "",
        "| checkpoint | proxy FD to the built-in references |", "|---|---|", *rows, "",
        "Proxy FD is the Frechet distance on the built-in proxy classifier's features (no Inception weights "
        "offline), not COCO FID; no CLIP score (its ViT-g-14 weights are not here either).", "",
        *[f"- `{name}`: {what}" for name, what in files.items()], ""])
    (out / "report.md").write_text(text)
    print(text)


def main(args: argparse.Namespace) -> None:
    (prepare if args.step == "prepare" else report)(Path(args.out))


if __name__ == "__main__":
    run_cli(main, parse_args())
