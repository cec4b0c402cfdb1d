"""DMD2's text-to-image teachers: a diffusers Stable Diffusion folder (SD1.5 layout) read from local disk.

The folder holds ``unet/`` (``UNet2DConditionModel``, eps prediction), ``scheduler/`` (its abar table), and
for prompts and samples ``text_encoder/`` + ``tokenizer/`` (CLIP) and ``vae/`` (``AutoencoderKL``). The
teacher is the UNet behind ``methods.dmd2_teacher.DiffusersEps``; its conditions are CLIP embeddings of
the training prompts (DMD2's ``--train_prompt_path``: a text file, one prompt a line, or DMD2's pickle of
a caption list), the null condition the embedding of the empty prompt, as DMD2's ``uncond_embedding``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from methods.dmd2_teacher import DDPMTeacher, DiffusersEps


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "unet" / "config.json").is_file()


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one a line) or DMD2's pickle of a list of captions."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--train_prompt_path {path}: no such file (a text file of prompts, or DMD2's captions .pkl)")
    if file.suffix == ".pkl":
        with open(file, "rb") as f:
            prompts = pickle.load(f)  # DMD2's captions_*.pkl: a list of str (a trusted, local file)
    else:
        prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"--train_prompt_path {path}: no prompts in it")
    return list(prompts)


class TextEncoder:
    """CLIP prompt embeddings (N, 77, D) of the folder's ``text_encoder`` and ``tokenizer``, no grad."""

    def __init__(self, folder: Path, device):
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.model = CLIPTextModel.from_pretrained(folder / "text_encoder").to(device).eval().requires_grad_(False)
        self.device = device
        self.length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)  # 77 in SD

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.length).input_ids
        return self.model(ids.to(self.device))[0].float()


def load_text_teacher(args, folder: Path, device):
    """``(teacher, cfg, codec, encoder)`` of a diffusers folder; the teacher's ``prompts`` are the embedded
    training prompts the generator is conditioned on."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from models.vae import load_vae

    missing = [name for name in ("scheduler", "text_encoder", "tokenizer", "vae") if not (folder / name).is_dir()]
    if missing:
        raise ValueError(f"--teacher {folder}: a Stable Diffusion folder needs unet/ and {', '.join(missing)}/ too "
                         "(save_pretrained of a StableDiffusionPipeline)")
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"--teacher {folder}: its scheduler predicts {scheduler.config.prediction_type}; DMD2 "
                         "distils eps-prediction UNets (SD1.5 layout)")
    model = DiffusersEps(UNet2DConditionModel.from_pretrained(folder / "unet")).to(device).eval()
    encoder = TextEncoder(folder, device)
    if not args.train_prompt_path:
        raise ValueError("a text-to-image teacher needs prompts: pass --train_prompt_path (one prompt a line)")
    prompts = encoder(read_prompts(args.train_prompt_path))
    null = encoder([""])
    codec = load_vae(str(folder / "vae"), device)
    teacher = DDPMTeacher(model, scheduler.alphas_cumprod.double().numpy(), objective=None, null=null)
    teacher.prompts = prompts
    cfg = {"model": "diffusers", "image_size": model.unet.config.sample_size * codec.downsample,
           "num_classes": 0, "vae": str(folder / "vae"), "ckpt": str(folder), "dataset": None, "model_kwargs": {}}
    return teacher, cfg, codec, encoder
