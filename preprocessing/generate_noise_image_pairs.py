"""Noise-image pairs of a Stable Diffusion teacher, the data of DMD2's one-step regression pretraining (DMD2's
``main/sdxl/generate_noise_image_pairs_laion_sdxl.py``, its flags).

  accelerate launch preprocessing/generate_noise_image_pairs.py --folder pairs/ --prompt_path \\
      captions_laion_score6.25.pkl --model_id stabilityai/stable-diffusion-xl-base-1.0 --num_batches 1250
  python preprocessing/create_lmdb_iterative.py --data_path pairs/ --lmdb_path sdxl_ode_pair_10k_lmdb

Each process takes its share of the prompts (shuffled, seed ``--seed`` + rank), draws unit noise latents and runs the
teacher's pipeline on them (diffusers' SDXL / SD pipeline, Euler with trailing timesteps, ``--num_inference_steps``,
guidance ``--guidance_scale`` against the null condition: zeros for SDXL, the empty prompt for SD1.5) to the final
latents. ``{folder}/noise_image_pairs_{rank:03d}.pt`` holds float16 arrays, DMD2's keys: ``latents`` (the noise),
``images`` (the latents it became), ``prompt_embeds_list`` and, for SDXL, ``pooled_prompt_embeds``. The file is
rewritten every 250 batches, atomically, so an interrupted run keeps what it made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import check_writable_dir, first_paragraph, require_positive, run_cli  # noqa: E402

SAVE_EVERY = 250  # batches between rewrites of a process's file, as DMD2's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--folder", type=str, required=True, help="where the pair files go")
    p.add_argument("--batch_size", type=int, default=8, help="per process")
    p.add_argument("--num_batches", type=int, default=1250, help="batches per process (at most its prompts' share)")
    p.add_argument("--guidance_scale", type=float, default=8)
    p.add_argument("--prompt_path", type=str, required=True, help="a text file of prompts or DMD2's captions .pkl")
    p.add_argument("--model_id", type=str, default="stabilityai/stable-diffusion-xl-base-1.0",
                   help="the teacher: a hub id or a diffusers folder")
    p.add_argument("--latent_resolution", type=int, default=128)
    p.add_argument("--latent_channel", type=int, default=4)
    p.add_argument("--revision", type=str, default=None)
    p.add_argument("--num_inference_steps", type=int, default=50, help="the pipeline's Euler steps (its default 50)")
    return p.parse_args(argv)


def load_pipeline(args, device):
    """``(pipeline, encoder, xl)``: the teacher's text-to-image pipeline (diffusers', built from the model's parts,
    which ``encoder``, DMD2's prompt encoder, shares) with Euler at trailing timesteps."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from models.stable_diffusion import SDSource, TextEncoder, XLTextEncoder, is_xl

    source = SDSource(args.model_id, args.revision)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = source.load(UNet2DConditionModel, "unet", torch_dtype=dtype)
    parts = {"unet": unet, "vae": source.load(AutoencoderKL, "vae", torch_dtype=dtype),
             "scheduler": EulerDiscreteScheduler.from_config(source.load(EulerDiscreteScheduler, "scheduler").config,
                                                             timestep_spacing="trailing")}
    if is_xl(unet.config):
        encoder = XLTextEncoder(source, device)
        parts.update(text_encoder=encoder.models[0], text_encoder_2=encoder.models[1],
                     tokenizer=encoder.tokenizers[0], tokenizer_2=encoder.tokenizers[1])
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        encoder = TextEncoder(source, device)
        pipe = StableDiffusionPipeline(**parts, text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), encoder, is_xl(unet.config)


def conditions(encoder, xl: bool, prompts: list[str], unet_config, dtype) -> dict:
    """The pipeline's embedding arguments for ``prompts`` and the null condition, as DMD2 encodes them."""
    from models.stable_diffusion import unpack

    if xl:
        embeds, pooled = unpack(encoder(prompts), unet_config)
        return {"prompt_embeds": embeds.to(dtype), "pooled_prompt_embeds": pooled.to(dtype),
                "negative_prompt_embeds": torch.zeros_like(embeds, dtype=dtype),
                "negative_pooled_prompt_embeds": torch.zeros_like(pooled, dtype=dtype)}
    embeds = encoder(prompts)
    return {"prompt_embeds": embeds.to(dtype), "negative_prompt_embeds": encoder([""] * len(prompts)).to(dtype)}


def save_pairs(arrays: dict[str, list[np.ndarray]], path: Path) -> None:
    from common.checkpoint import save_atomic

    save_atomic({k: np.concatenate(v) for k, v in arrays.items()}, path)


def my_prompts(prompts: list[str], rank: int, world: int, seed: int) -> list[str]:
    """This process's contiguous share of the prompts (DMD2's split), shuffled with ``seed``."""
    share = prompts[rank * len(prompts) // world:(rank + 1) * len(prompts) // world]
    order = torch.randperm(len(share), generator=torch.Generator().manual_seed(seed)).tolist()
    return [share[i] for i in order]


@torch.no_grad()
def main(args: argparse.Namespace) -> None:
    from common.setup import seed_everything, setup_accelerator
    from models.stable_diffusion import read_prompts

    require_positive(args, "batch_size", "num_batches", "latent_resolution", "latent_channel", "num_inference_steps",
                     flag="--{}".format)
    prompts = read_prompts(args.prompt_path, "--prompt_path")
    check_writable_dir(args.folder, "--folder")
    accelerator = setup_accelerator()
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    seed_everything(args.seed + rank)  # every process draws its own noise
    pipe, encoder, xl = load_pipeline(args, device)
    mine = my_prompts(prompts, rank, world, args.seed + rank)
    batches = min(args.num_batches, len(mine) // args.batch_size)
    if batches == 0:
        raise ValueError(f"--prompt_path {args.prompt_path}: {len(mine)} prompts for process {rank}, fewer than "
                         f"--batch_size {args.batch_size}")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"noise_image_pairs_{rank:03d}.pt"
    arrays = {k: [] for k in ("latents", "images", "prompt_embeds_list", *(("pooled_prompt_embeds",) if xl else ()))}
    shape = (args.batch_size, args.latent_channel, args.latent_resolution, args.latent_resolution)
    for b in tqdm(range(batches), desc="pairs", disable=rank != 0, dynamic_ncols=True):
        cond = conditions(encoder, xl, mine[b * args.batch_size:(b + 1) * args.batch_size], pipe.unet.config,
                          pipe.unet.dtype)
        noise = torch.randn(shape, device=device).to(pipe.unet.dtype)
        images = pipe(**cond, latents=noise, output_type="latent", guidance_scale=args.guidance_scale,
                      num_inference_steps=args.num_inference_steps).images
        for key, value in (("latents", noise), ("images", images), ("prompt_embeds_list", cond["prompt_embeds"]),
                           ("pooled_prompt_embeds", cond.get("pooled_prompt_embeds"))):
            if key in arrays:
                arrays[key].append(value.cpu().half().numpy())
        if (b + 1) % SAVE_EVERY == 0:
            save_pairs(arrays, path)
    save_pairs(arrays, path)
    accelerator.wait_for_everyone()
    print(f"process {rank}: {batches * args.batch_size:,} noise-image pairs in {path}")


if __name__ == "__main__":
    run_cli(main, parse_args())
