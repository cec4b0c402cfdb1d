"""VAE latents of image files for DMD2's Stable Diffusion LMDB (DMD2's ``main/sdxl/generate_vae_latents.py``, its
flags), the real data of ``train_dmd2.py --real_image_path`` for SD1.5 and SDXL teachers.

  accelerate launch preprocessing/generate_vae_latents.py --folder laion_images/ --output_folder \\
      sdxl_vae_latents_laion_500k --model_name sdxl --image_size 1024 --resize
  python preprocessing/create_lmdb_iterative.py --data_path sdxl_vae_latents_laion_500k \\
      --lmdb_path sdxl_vae_latents_laion_500k_lmdb

``--folder`` holds ``*.pt`` files as DMD2 keeps its image shards: a dict with ``images`` (uint8, N x 3 x H x W) and
``prompts`` (N captions). The VAE (``--model_id``, by default the one ``--model_name`` names, as DMD2's script hard
codes it) encodes each image, resized to ``--image_size`` with Lanczos when ``--resize``, mapped to [-1, 1]; the
latent is a posterior sample times the VAE's scaling factor, stored as float16 beside the prompts in
``{output_folder}/vae_latents_{index:03d}.pt`` for input file ``index`` (sorted names). Processes share the files
(file i goes to process i mod N); a file already written is skipped, so a stopped run continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import check_writable_dir, first_paragraph, require_positive, run_cli  # noqa: E402

MODELS = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "sd": "runwayml/stable-diffusion-v1-5"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--folder", type=str, required=True, help="the image shards (*.pt: images, prompts)")
    p.add_argument("--output_folder", type=str, required=True)
    p.add_argument("--model_name", choices=sorted(MODELS), default="sdxl")
    p.add_argument("--model_id", type=str, default=None, help="the model whose vae/ encodes (a hub id or a "
                   "folder; default: --model_name's, " + ", ".join(f"{k}: {v}" for k, v in MODELS.items()) + ")")
    p.add_argument("--revision", type=str, default=None)
    p.add_argument("--image_size", type=int, default=0, help="with --resize: the side images are resized to")
    p.add_argument("--resize", action="store_true", help="resize the images to --image_size (Lanczos) first")
    p.add_argument("--batch_size", type=int, default=16, help="images per VAE call (DMD2's 16)")
    p.add_argument("--seed", type=int, default=0, help="the posterior samples' seed (plus the file's index)")
    return p.parse_args(argv)


def read_shard(path: Path) -> tuple[torch.Tensor, list[str]]:
    """``(uint8 images N x 3 x H x W, N prompts)`` of one of DMD2's image shards."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)  # DMD2's shards: a trusted, local file
    except Exception as error:
        raise ValueError(f"{path}: not a readable .pt file ({type(error).__name__})") from None
    if not isinstance(data, dict) or "images" not in data or "prompts" not in data:
        raise ValueError(f"{path}: expected a dict with images and prompts (DMD2's image shards)")
    images, prompts = torch.as_tensor(np.asarray(data["images"])), [str(p) for p in data["prompts"]]
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or len(images) != len(prompts):
        raise ValueError(f"{path}: images must be uint8 N x 3 x H x W with one prompt each; got "
                         f"{images.dtype} {tuple(images.shape)} and {len(prompts)} prompts")
    return images, prompts


def to_model_input(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 CHW images (resized with Lanczos to ``size`` when given) as floats in [-1, 1]."""
    if size:
        images = torch.stack([torch.from_numpy(np.array(Image.fromarray(im.permute(1, 2, 0).numpy()).resize(
            (size, size), Image.LANCZOS))).permute(2, 0, 1) for im in images])
    return images.float() / 255.0 * 2.0 - 1.0


@torch.no_grad()
def encode_shard(vae, path: Path, args, seed: int, device) -> dict:
    images, prompts = read_shard(path)
    generator = torch.Generator(device).manual_seed(seed)
    latents = []
    for i in range(0, len(images), args.batch_size):
        x = to_model_input(images[i:i + args.batch_size], args.image_size if args.resize else None).to(device)
        z = vae.encode(x).latent_dist.sample(generator) * vae.config.scaling_factor
        latents.append(z.half().cpu().numpy())
    return {"latents": np.concatenate(latents), "prompts": np.array(prompts)}


def main(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKL

    from common.checkpoint import save_atomic
    from common.setup import setup_accelerator
    from models.stable_diffusion import SDSource

    require_positive(args, "batch_size", flag="--{}".format)
    if args.resize and args.image_size <= 0:
        raise ValueError("--resize needs --image_size N (DMD2's SDXL latents: 1024)")
    files = sorted(Path(args.folder).glob("*.pt")) if Path(args.folder).is_dir() else []
    if not files:
        raise ValueError(f"--folder {args.folder}: no *.pt image shards there (dicts of images and prompts)")
    check_writable_dir(args.output_folder, "--output_folder")
    accelerator = setup_accelerator()
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    vae = SDSource(args.model_id or MODELS[args.model_name], args.revision).load(AutoencoderKL, "vae")
    vae = vae.to(device).float().eval()
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    mine = [(i, f) for i, f in enumerate(files) if i % world == rank]
    for index, path in tqdm(mine, desc="shards", disable=rank != 0, dynamic_ncols=True):
        target = out / f"vae_latents_{index:03d}.pt"
        if not target.is_file():
            save_atomic(encode_shard(vae, path, args, args.seed + index, device), target)
    accelerator.wait_for_everyone()
    print(f"process {rank}: latents of {len(mine)} shard(s) in {out}")


if __name__ == "__main__":
    run_cli(main, parse_args())
