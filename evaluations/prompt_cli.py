"""``sample.py --prompt``: DMD2's text-to-image generators (SD1.5, SDXL), sampled as DMD2's demo samples them.

  python sample.py --ckpt results/000-DMD2-diffusers/checkpoints/0002000.pt --prompt "a photo of a cat"
  python sample.py --ckpt dmd2_unet.bin --model_id runwayml/stable-diffusion-v1-5 --num_step 4 --prompts prompts.txt
  python sample.py --ckpt checkpoint_model_002000/ --model_id FOLDER --num_step 1 --conditioning_timestep 399

The generator is a train_dmd2.py checkpoint (its LoRA adapters merged; its steps, VAE and base model as recorded),
or DMD2's own weights: a UNet state dict (``pytorch_model.bin``, a ``checkpoint_model_NNNNNN/`` folder, a
``.safetensors`` file, as DMD2's model zoo ships) or DMD2's LoRA file (``dmd2_sdxl_4step_lora_fp16.safetensors``,
fused into the base UNet as diffusers' ``fuse_lora``) on the base model ``--model_id`` (a hub id or a folder) with
``--num_step`` 1 (from ``--conditioning_timestep``) or 4 (steps [999, 749, 499, 249]). DMD2's loop: unit noise, the
generator's x0 at each step, noised afresh to the next (``diffusion.pipeline.few_step_sample``); no guidance. One
image per prompt (``--samples`` each), a grid of them in ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DMD2_FOUR_STEPS = [999, 749, 499, 249]  # DMD2's demo and model zoo


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text-to-image generators (DMD2; --prompt or --prompts selects this mode)")
    g.add_argument("--prompt", action="append", default=None, help="a prompt (repeat the flag for more)")
    g.add_argument("--prompts", type=str, default=None, help="a text file of prompts, one a line")
    g.add_argument("--model_id", "--model-id", dest="model_id", type=str, default=None,
                   help="the base Stable Diffusion model (hub id or folder) for DMD2's own weights; default: the "
                        "checkpoint's teacher")
    g.add_argument("--revision", type=str, default=None, help="the hub revision of --model_id")
    g.add_argument("--num_step", "--num-step", dest="num_step", type=int, choices=[1, 4], default=None,
                   help="DMD2's weights: 1 (from --conditioning_timestep) or 4 (steps 999, 749, 499, 249); a "
                        "train_dmd2.py checkpoint takes its own")
    g.add_argument("--conditioning_timestep", "--conditioning-timestep", dest="conditioning_timestep", type=int,
                   default=999, help="the one-step generator's timestep (DMD2's SDXL one-step: 399)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="float32", help="the UNet's dtype, as DMD2's demo")


def read_prompt_args(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        from models.stable_diffusion import read_prompts

        prompts += read_prompts(args.prompts, flag="--prompts")
    return prompts


def generator_weights(path: str, lora_alpha: float = 8.0) -> tuple[dict, dict | None]:
    """``(UNet state dict, train_dmd2.py's sampling record or None)`` of ``--ckpt``; a LoRA generator's adapters
    merged (DMD2's own ``--generator_lora`` weights: peft's names, the rank from their shapes, ``lora_alpha``)."""
    from common.checkpoint import load_checkpoint
    from models.pretrained import merge_lora

    file = Path(path)
    if file.is_dir():  # DMD2's checkpoint_model_NNNNNN/: the generator is pytorch_model.bin
        if not (file / "pytorch_model.bin").is_file():
            raise ValueError(f"--ckpt {path}: no pytorch_model.bin in this folder (DMD2's checkpoint_model_NNNNNN/)")
        file = file / "pytorch_model.bin"
    if file.suffix == ".safetensors":  # DMD2's UNet weights, or its LoRA file (fused later into the base UNet)
        from safetensors.torch import load_file

        return load_file(file), None
    ckpt = load_checkpoint(file)
    record = ckpt.get("sampling_record") if isinstance(ckpt, dict) else None
    if record is not None:
        if record.get("model") != "diffusers" or not record.get("generator_sigmas"):
            raise ValueError(f"--ckpt {path} is a {record.get('model')} model, not a text-to-image generator: "
                             "sample it without --prompt")
        weights = ckpt["model"]
        if "lora_rank" in record:
            weights = merge_lora(weights, record["lora_alpha"] / record["lora_rank"])
        return weights, record
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"--ckpt {path}: neither a UNet state dict (DMD2's weights) nor a train_dmd2.py checkpoint")
    down = next((v for k, v in ckpt.items() if ".lora_A." in k), None)
    return (ckpt if down is None else merge_lora(ckpt, lora_alpha / down.shape[0])), None


def dmd2_base(weights: dict) -> str:
    """The base model DMD2's evaluation scripts load a bare UNet state dict on: SDXL's when the UNet adds pooled text
    and time ids (``add_embedding``), else SD1.5's."""
    xl = any(key.startswith(("add_embedding.", "lora_unet_add_embedding")) for key in weights)
    return "stabilityai/stable-diffusion-xl-base-1.0" if xl else "runwayml/stable-diffusion-v1-5"


def load_text_generator(args, device):
    """``(generator, prompt encoder, codec, the base model's abar table)``: a ``DiffusersEps`` UNet with the
    generator's weights and noise levels, the base model's text encoder, VAE and scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from diffusion.denoiser import ddpm_sigmas
    from models.lora import is_kohya_lora, merge_kohya
    from models.stable_diffusion import DiffusersEps, SDSource, TextEncoder, UNetConfig, XLTextEncoder
    from models.vae import SDVAE
    from models.weights import load_weights

    if not args.ckpt:
        raise ValueError("--prompt samples a text-to-image generator: pass --ckpt (a train_dmd2.py checkpoint or "
                         "DMD2's UNet weights with --model_id)")
    weights, record = generator_weights(args.ckpt, getattr(args, "lora_alpha", 8.0))
    base = args.model_id or (record or {}).get("sd_model")
    if base is None and getattr(args, "dmd2_base", False):
        base = dmd2_base(weights)
    if base is None:
        raise ValueError(f"--ckpt {args.ckpt} holds a UNet's weights only: pass its base model with --model_id "
                         "(e.g. runwayml/stable-diffusion-v1-5, or a folder)")
    source = SDSource(base, args.revision, flag="--model_id")
    vae = source.load(AutoencoderKL, "vae")
    codec = SDVAE(vae, vae.config.scaling_factor).to(device)
    if is_kohya_lora(weights):  # DMD2's LoRA file: fused into the base model's UNet (diffusers' fuse_lora, scale 1)
        unet = source.load(UNet2DConditionModel, "unet")
        names = [name for name, _ in unet.named_modules()]
        weights = merge_kohya(unet.state_dict(), weights, names, f"--ckpt {args.ckpt}")
    else:
        unet = UNet2DConditionModel.from_config(source.load(UNetConfig, "unet"))
    abar = source.load(DDPMScheduler, "scheduler").alphas_cumprod.double().numpy()
    model = DiffusersEps(unet, unet.config.sample_size * codec.downsample, abar)
    load_weights(model.unet, weights, f"--ckpt {args.ckpt}")
    model = model.to(device, PRECISIONS[args.precision]).eval().requires_grad_(False)
    if record is not None:
        sigmas = [float(s) for s in record["generator_sigmas"]]
        if args.num_step is not None and args.num_step != len(sigmas):
            raise ValueError(f"--num_step {args.num_step}: the generator in {args.ckpt} takes {len(sigmas)} steps; "
                             "drop --num_step")
    else:
        steps = DMD2_FOUR_STEPS if (args.num_step or 4) == 4 else [args.conditioning_timestep]
        sigmas = [float(s) for s in ddpm_sigmas(abar)[steps]]
    model.generator_sigmas = sigmas
    return model, (XLTextEncoder if model.xl else TextEncoder)(source, device), codec, abar


@torch.no_grad()
def sample_prompts(model, encoder, abar, prompts: list[str], seed: int, dtype=torch.float32) -> torch.Tensor:
    """DMD2's demo loop from seed ``seed``: unit noise, then per step the generator's x0, noised afresh to the next
    step; the final latents (float32)."""
    from diffusion.denoiser import DDPMDenoiser
    from diffusion.pipeline import few_step_sample

    device = next(model.parameters()).device
    torch.manual_seed(seed)
    size = model.unet.config.sample_size
    noise = torch.randn(len(prompts), model.unet.config.in_channels, size, size, device=device)
    embeddings = encoder(prompts).to(dtype)
    x0 = few_step_sample(DDPMDenoiser(model, abar), noise.to(dtype), embeddings, model.generator_sigmas, unit_noise=True)
    return x0.float()


@torch.no_grad()
def prompt_main(args: argparse.Namespace) -> None:
    from common.monitor import save_grid

    prompts = read_prompt_args(args)
    if not prompts:
        raise ValueError(f"--prompts {args.prompts} holds no prompts")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, encoder, codec, abar = load_text_generator(args, device)
    prompts = [p for p in prompts for _ in range(args.samples)]
    latents = sample_prompts(model, encoder, abar, prompts, args.seed, PRECISIONS[args.precision])
    save_grid(codec.decode(latents), args.output, nrow=args.samples if args.samples > 1 else min(4, len(prompts)))
    steps = len(model.generator_sigmas)
    print(f"saved {len(prompts)} samples of {args.ckpt} ({steps} step{'s' * (steps > 1)}) to {args.output}")
