"""Latent codecs: the Stable Diffusion VAE (diffusers ``AutoencoderKL``) or pixel space.

``encode`` maps images in [-1, 1] to latents already multiplied by the scale 0.18215
(LDM, Rombach et al. 2022, section 4.3 / appendix G); ``decode`` inverts it. DiT
trains on ``sd-vae-ft-ema`` latents and samples with ``sd-vae-ft-mse``.
``--vae none`` is pixel space: the identity codec.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import hub

SD_VAE_SCALE = 0.18215
HUB_NAMES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


class PixelCodec(torch.nn.Module):
    """Pixel space: images are their own latents (``--vae none``).

    ``bounded``: the latents are images in [-1, 1], so DDPM sampling clips its x0 prediction
    (ADM / IDDPM ``clip_denoised=True`` for pixel models); VAE latents are unbounded (DiT: False).
    """

    latent_channels = 3
    downsample = 1
    bounded = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class SDVAE(torch.nn.Module):
    """A diffusers ``AutoencoderKL`` with the LDM latent scale."""

    bounded = False  # latents are unbounded: DDPM sampling does not clip (DiT's clip_denoised=False)

    def __init__(self, vae, scale: float = SD_VAE_SCALE):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scale = scale
        self.latent_channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the posterior q(z|x), unscaled (cached by preprocessing)."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A posterior sample times the scale, as DiT's ``train.py`` does."""
        return self.vae.encode(x).latent_dist.sample() * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale).sample


def load_vae(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``none`` | ``ema`` | ``mse`` | a diffusers folder (with ``config.json``) | a hub id.

    Hub weights come from the local Hugging Face cache first; without a cache and
    without network the error names what to download and where to point ``--vae``.
    """
    if name == "none":
        return PixelCodec().to(device)
    path = Path(name).expanduser()
    repo = HUB_NAMES.get(name, name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"--vae {name}: expected a diffusers AutoencoderKL folder with config.json "
                             "and diffusion_pytorch_model.safetensors")
    elif "/" not in repo:
        raise ValueError(f"--vae {name}: use ema, mse, none, a local diffusers folder or a hub id")
    elif name.startswith((".", "/", "~")) or repo.count("/") > 1:  # a hub id is exactly "owner/name"
        raise ValueError(f"--vae {name}: no such folder")
    from diffusers import AutoencoderKL

    if path.exists():
        return SDVAE(AutoencoderKL.from_pretrained(path)).to(device)
    try:
        vae = AutoencoderKL.from_pretrained(repo, local_files_only=True)
    except Exception:
        vae = None
        if not hub.offline():
            try:
                vae = AutoencoderKL.from_pretrained(repo)
            except Exception:
                vae = None
        if vae is None:
            local = f"vae/{repo.split('/')[-1]}"
            raise ValueError(f"--vae {name}: {repo} is not in the Hugging Face cache and cannot be downloaded; "
                             f"on a machine with internet run `hf download {repo} config.json "
                             f"diffusion_pytorch_model.safetensors --local-dir {local}`, copy the folder here "
                             f"and pass --vae {local}") from None
    return SDVAE(vae).to(device)
