"""Stable Diffusion models as diffusers stores them (SD1.5 layout): the parts of one, read from a local folder or a
hub id through the Hugging Face cache (``SDSource``), its CLIP prompt encoder, its UNet as a network of this
repository (``DiffusersEps``), and prompt files. DMD2 distils such models (``methods/dmd2_text.py``) and
``sample.py --prompt`` samples what it distils (``evaluations/prompt_cli.py``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from models import hub


def is_diffusers_model(name: str) -> bool:
    """A diffusers folder (``unet/config.json``), or a hub id (the originals name only such teachers by id)."""
    path = Path(name).expanduser()
    return (path / "unet" / "config.json").is_file() if path.exists() else hub.hub_parts(name) is not None


class SDSource:
    """The parts of a Stable Diffusion model: ``load(cls, part)`` is ``cls.from_pretrained`` of its ``part/``, from
    the local folder or the hub id (at ``revision``); ``name(part)`` is what a checkpoint records for that part."""

    def __init__(self, name: str, revision: str | None = None, flag: str = "--model_id"):
        self.root, self.revision, self.flag = name, revision, flag
        self.local = Path(name).expanduser().exists()

    def load(self, cls, part: str, **kwargs):
        if self.local and not (Path(self.root).expanduser() / part).is_dir():
            raise ValueError(f"{self.flag} {self.root}: a Stable Diffusion folder needs {part}/ (save_pretrained of a "
                             "StableDiffusionPipeline)")
        return hub.from_pretrained(cls, self.root, self.flag, subfolder=part, revision=self.revision, **kwargs)

    def name(self, part: str) -> str:
        if self.local:
            return str((Path(self.root).expanduser() / part).absolute())
        repo, sub, revision = hub.hub_parts(self.root)
        return hub.hub_name(repo, "/".join(p for p in (sub, part) if p), self.revision or revision)


class TextEncoder:
    """CLIP prompt embeddings (N, 77, D) of the model's ``text_encoder`` and ``tokenizer``, no grad."""

    def __init__(self, source: SDSource, device):
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = source.load(CLIPTokenizer, "tokenizer")
        self.model = source.load(CLIPTextModel, "text_encoder").to(device).eval().requires_grad_(False)
        self.device = device
        self.length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)  # 77 in SD

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                             max_length=self.length).input_ids
        return self.model(ids.to(self.device))[0].float()


def read_prompts(path: str, flag: str = "--train_prompt_path") -> list[str]:
    """Prompts from a text file (one a line) or DMD2's pickle of a list of captions."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{flag} {path}: no such file (a text file of prompts, or DMD2's captions .pkl)")
    if file.suffix == ".pkl":
        with open(file, "rb") as f:
            prompts = pickle.load(f)  # DMD2's captions_*.pkl: a list of str (a trusted, local file)
    else:
        prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{flag} {path}: no prompts in it")
    return list(prompts)


class UNetConfig:
    """``from_pretrained`` that reads a UNet's config only (DMD2 builds its generator ``from_config``)."""

    @staticmethod
    def from_pretrained(name, **kwargs):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.load_config(name, **kwargs)


class DiffusersEps(torch.nn.Module):
    """A diffusers ``UNet2DConditionModel`` (SD1.5 layout, eps prediction) as ``net(x, t, y)`` with ``y`` the
    prompt embeddings (N, L, D), so ``DDPMDenoiser`` reads it like any eps model."""

    prediction = "eps"
    learn_sigma = False
    unit_noise = True  # DMD2's SD generators start from unit noise, as diffusers' pipelines do

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def bottleneck_module(self) -> torch.nn.Module:
        """DMD2's GAN head reads the UNet's ``mid_block`` (``diffusion.network``)."""
        return self.unet.mid_block

    def forward(self, x, t, y, **kwargs):
        return self.unet(x, t, encoder_hidden_states=y, **kwargs).sample
