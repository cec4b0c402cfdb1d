"""DMD2's text-to-image teachers: a diffusers Stable Diffusion model (SD1.5 layout), a local folder or a hub id.

``--model_id runwayml/stable-diffusion-v1-5`` (``--revision`` too) loads as diffusers loads it, through the Hugging
Face cache; a local folder (``save_pretrained``'s layout) always works. The model holds ``unet/``
(``UNet2DConditionModel``, eps prediction), ``scheduler/`` (its abar table), and for prompts and samples
``text_encoder/`` + ``tokenizer/`` (CLIP) and ``vae/`` (``AutoencoderKL``). The teacher is the UNet behind
``methods.dmd2_teacher.DiffusersEps``; its conditions are CLIP embeddings of the training prompts (DMD2's
``--train_prompt_path``: a text file, one prompt a line, or DMD2's pickle of a caption list), encoded a batch at a
time as they are drawn; the null condition is the embedding of the empty prompt, as DMD2's ``uncond_embedding``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from methods.dmd2_teacher import DDPMTeacher, DiffusersEps
from models import hub


def is_diffusers_teacher(name: str) -> bool:
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


class Prompts:
    """The training prompts, embedded a batch at a time as they are drawn (DMD2's LAION caption set is millions):
    ``draw(n, device)`` embeds n random prompts, ``first(n)`` the first n (the sample grids)."""

    def __init__(self, prompts: list[str], encoder: TextEncoder):
        self.prompts, self.encoder = prompts, encoder

    def __len__(self) -> int:
        return len(self.prompts)

    def draw(self, n: int, device) -> torch.Tensor:
        index = torch.randint(0, len(self.prompts), (n,)).tolist()
        return self.encoder([self.prompts[i] for i in index]).to(device)

    def first(self, n: int) -> torch.Tensor:
        return self.encoder(self.prompts[:n])


def load_text_teacher(args, name: str, device):
    """``(teacher, cfg, codec, encoder)`` of a Stable Diffusion model (a folder or a hub id at ``--revision``); the
    teacher's ``prompts`` are the training prompts the generator is conditioned on."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from models.vae import SDVAE

    source = SDSource(name, args.revision)
    scheduler = source.load(DDPMScheduler, "scheduler")
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"--model_id {name}: its scheduler predicts {scheduler.config.prediction_type}; DMD2 "
                         "distils eps-prediction UNets (SD1.5 layout)")
    if not args.train_prompt_path:
        raise ValueError("a text-to-image teacher needs prompts: pass --train_prompt_path (one prompt a line)")
    prompts = read_prompts(args.train_prompt_path)
    model = DiffusersEps(source.load(UNet2DConditionModel, "unet")).to(device).eval()
    encoder = TextEncoder(source, device)
    vae = source.load(AutoencoderKL, "vae")
    codec = SDVAE(vae, vae.config.scaling_factor).to(device)
    teacher = DDPMTeacher(model, scheduler.alphas_cumprod.double().numpy(), objective=None, null=encoder([""]))
    teacher.prompts = Prompts(prompts, encoder)
    cfg = {"model": "diffusers", "image_size": model.unet.config.sample_size * codec.downsample,
           "num_classes": 0, "vae": source.name("vae"), "ckpt": name, "dataset": None, "model_kwargs": {},
           "sd_model": source.name("")}
    return teacher, cfg, codec, encoder
