"""DMD2's text-to-image teachers: a diffusers Stable Diffusion model (SD1.5's or SDXL's layout), a folder or a hub id.

``--model_id runwayml/stable-diffusion-v1-5`` (``--revision`` too) loads as diffusers loads it, through the Hugging
Face cache; a local folder (``save_pretrained``'s layout) always works. The model holds ``unet/``
(``UNet2DConditionModel``, eps prediction), ``scheduler/`` (its abar table), and for prompts and samples
``text_encoder/`` + ``tokenizer/`` (CLIP; SDXL: and ``text_encoder_2/`` + ``tokenizer_2/``) and ``vae/``
(``AutoencoderKL``; ``--tiny_vae``: TAESD decodes SDXL's grids). The teacher is the UNet behind
``models.stable_diffusion.DiffusersEps``; its conditions are CLIP embeddings of the training prompts (DMD2's
``--train_prompt_path``: a text file, one prompt a line, or DMD2's pickle of a caption list), encoded a batch at a
time as they are drawn; the null condition is the embedding of the empty prompt, as DMD2's ``uncond_embedding``.
"""

from __future__ import annotations

import torch

from methods.dmd2_teacher import DDPMTeacher
from models.stable_diffusion import DiffusersEps, SDSource, TextEncoder, XLTextEncoder, is_xl, read_prompts


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


TAESDXL = "madebyollin/taesdxl"  # DMD2's --tiny_vae for SDXL


def load_sd_parts(name: str, revision: str | None, sdxl: bool, tiny_vae: bool, flag: str = "--model_id"):
    """``(source, scheduler, unet, codec)`` of a Stable Diffusion model (SD1.5's layout or SDXL's; a folder or a hub id
    at ``revision``): its DDPM scheduler (eps prediction, checked), its UNet, and the codec of its VAE (``tiny_vae``:
    TAESD decodes SDXL's latents); ``--sdxl`` and ``--tiny_vae`` are checked against the UNet."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

    from models import hub
    from models.vae import SDVAE, TinyDecoder

    source = SDSource(name, revision, flag)
    scheduler = source.load(DDPMScheduler, "scheduler")
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"{flag} {name}: its scheduler predicts {scheduler.config.prediction_type}; DMD2 "
                         "distils eps-prediction UNets (SD1.5's and SDXL's layouts)")
    unet = source.load(UNet2DConditionModel, "unet")
    if sdxl and not is_xl(unet.config):
        raise ValueError(f"--sdxl: {name} is not an SDXL model (its UNet takes no pooled text or time ids); drop "
                         "--sdxl for an SD1.5-layout model")
    if tiny_vae and not is_xl(unet.config):
        raise ValueError(f"--tiny_vae decodes SDXL's latents with {TAESDXL}; {name} is not SDXL: drop --tiny_vae")
    vae = source.load(AutoencoderKL, "vae")
    codec = SDVAE(vae, vae.config.scaling_factor)
    if tiny_vae:
        tiny = hub.from_pretrained(AutoencoderTiny, TAESDXL, "--tiny_vae")
        codec = TinyDecoder(tiny, codec.latent_channels, codec.downsample)
    return source, scheduler, unet, codec


def load_text_teacher(args, name: str, device):
    """``(teacher, cfg, codec, encoder)`` of a Stable Diffusion model (``load_sd_parts``); the teacher's ``prompts``
    are the training prompts the generator is conditioned on. SDXL's null condition is zeros, SD1.5's the empty
    prompt's embedding, as DMD2's."""
    if not args.train_prompt_path:
        raise ValueError("a text-to-image teacher needs prompts: pass --train_prompt_path (one prompt a line)")
    prompts = read_prompts(args.train_prompt_path)
    source, scheduler, unet, codec = load_sd_parts(name, args.revision, args.sdxl, args.tiny_vae)
    image_size = unet.config.sample_size * codec.downsample
    abar = scheduler.alphas_cumprod.double().numpy()
    model = DiffusersEps(unet, image_size, abar).to(device).eval()
    encoder = (XLTextEncoder if model.xl else TextEncoder)(source, device)
    null = torch.zeros_like(encoder([""])) if model.xl else encoder([""])
    teacher = DDPMTeacher(model, abar, objective=None, null=null)
    teacher.prompts = Prompts(prompts, encoder)
    cfg = {"model": "diffusers", "image_size": image_size, "num_classes": 0, "vae": source.name("vae"), "ckpt": name,
           "dataset": None, "model_kwargs": {}, "sd_model": source.name("")}
    return teacher, cfg, codec.to(device), encoder
