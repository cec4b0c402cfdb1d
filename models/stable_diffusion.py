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


class XLTextEncoder:
    """SDXL's two prompt encoders as DMD2's ``SDXLTextEncoder``: the penultimate hidden states of ``text_encoder``
    (CLIP) and ``text_encoder_2`` (CLIP with projection) side by side (N, 77, D1 + D2), and the second's projected
    pooled embedding (N, P); returned packed in one tensor (``pack``), which ``DiffusersEps`` unpacks."""

    def __init__(self, source: SDSource, device):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        self.tokenizers = [source.load(CLIPTokenizer, "tokenizer"), source.load(CLIPTokenizer, "tokenizer_2")]
        self.models = [source.load(cls, part).to(device).eval().requires_grad_(False) for cls, part in
                       ((CLIPTextModel, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2"))]
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        hidden = []
        for tokenizer, model in zip(self.tokenizers, self.models):
            ids = tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                            max_length=tokenizer.model_max_length).input_ids
            out = model(ids.to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        return pack(torch.cat(hidden, dim=-1).float(), out[0].float())


def pack(embeddings: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """SDXL's conditions as one tensor (N, L * D + P), so that they travel wherever class labels and SD1.5's
    embeddings do (drawn, concatenated with the null condition, chunked)."""
    return torch.cat([embeddings.flatten(1), pooled], dim=1)


def unpack(y: torch.Tensor, unet_config) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``pack``: ``(embeddings (N, L, D), pooled (N, P))``, sized by the SDXL UNet's config."""
    pooled = unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim
    return y[:, :-pooled].reshape(len(y), -1, unet_config.cross_attention_dim), y[:, -pooled:]


def xl_time_ids(resolution: int) -> torch.Tensor:
    """SDXL's added time ids as DMD2 builds them: original size, crop (0, 0), target size, all ``resolution``."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)


def is_xl(unet_config) -> bool:
    """An SDXL UNet: pooled text and time ids added to its time embedding."""
    return unet_config.get("addition_embed_type") == "text_time"


class DiffusersEps(torch.nn.Module):
    """A diffusers ``UNet2DConditionModel`` (eps prediction) as ``net(x, t, y)``, so ``DDPMDenoiser`` reads it like
    any eps model: ``y`` the prompt embeddings (N, L, D) for SD1.5, SDXL's packed conditions (``pack``) with its
    time ids for a ``resolution`` px image when ``xl`` (its conditions are unpacked by the UNet's own sizes);
    ``alphas_cumprod``: its scheduler's abar table, on which samplers read its noise levels."""

    prediction = "eps"
    learn_sigma = False
    unit_noise = True  # DMD2's SD generators start from unit noise, as diffusers' pipelines do

    def __init__(self, unet: torch.nn.Module, resolution: int | None = None, alphas_cumprod=None):
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod  # the scheduler's abar table (float64), which samplers read
        self.xl = is_xl(unet.config)
        if self.xl:
            self.register_buffer("time_ids", xl_time_ids(resolution), persistent=False)

    def bottleneck_module(self) -> torch.nn.Module:
        """DMD2's GAN head reads the UNet's ``mid_block`` (``diffusion.network``)."""
        return self.unet.mid_block

    def forward(self, x, t, y, **kwargs):
        if not self.xl:
            return self.unet(x, t, encoder_hidden_states=y, **kwargs).sample
        embeddings, pooled = unpack(y, self.unet.config)
        added = {"text_embeds": pooled, "time_ids": self.time_ids.to(y.dtype).expand(len(y), -1)}
        return self.unet(x, t, encoder_hidden_states=embeddings, added_cond_kwargs=added, **kwargs).sample
