"""Latent codecs: the Stable Diffusion VAE (diffusers ``AutoencoderKL``) or pixel space.

``encode`` maps images in [-1, 1] to latents already multiplied by the scale 0.18215
(LDM, Rombach et al. 2022, section 4.3 / appendix G); ``decode`` inverts it. DiT
trains on ``sd-vae-ft-ema`` latents and samples with ``sd-vae-ft-mse``.
``--vae none`` is pixel space: the identity codec.
"""

from __future__ import annotations

from functools import partial
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
        return self.decode_with_grad(z)

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """``decode`` with gradients to ``z`` (DMD2's regression loss on decoded images)."""
        return self.vae.decode(z / self.scale).sample


class TinyDecoder(torch.nn.Module):
    """A diffusers ``AutoencoderTiny`` (TAESD; DMD2's ``--tiny_vae``, ``madebyollin/taesdxl`` for SDXL) that decodes
    the scaled latents of the VAE it stands in for; it encodes nothing (DMD2 trains on cached latents)."""

    bounded = False

    def __init__(self, vae, latent_channels: int, downsample: int):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels, self.downsample = latent_channels, downsample

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("--tiny_vae only decodes: train on DMD2's LMDB of latents (--real_image_path)")

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_with_grad(z)

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """``decode`` with gradients to ``z`` (DMD2's regression loss on decoded images)."""
        return self.vae.decode(z / self.vae.config.scaling_factor).sample


def load_vae(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``none`` | ``ema`` | ``mse`` | a diffusers folder (with ``config.json``) | a hub id, with a subfolder and a
    revision where needed (``runwayml/stable-diffusion-v1-5/vae@main``, ``models.hub.hub_parts``).

    Hub weights come from the local Hugging Face cache first; without a cache and
    without network the error names what to download and where to point ``--vae``.
    """
    if name == "none":
        return PixelCodec().to(device)
    path = Path(name).expanduser()
    from diffusers import AutoencoderKL

    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"--vae {name}: expected a diffusers AutoencoderKL folder with config.json "
                             "and diffusion_pytorch_model.safetensors")
        return SDVAE(AutoencoderKL.from_pretrained(path)).to(device)
    repo = HUB_NAMES.get(name, name)
    if "/" not in repo:
        raise ValueError(f"--vae {name}: use ema, mse, none, a local diffusers folder or a hub id")
    return SDVAE(hub.from_pretrained(AutoencoderKL, repo, "--vae")).to(device)


# ---------------------------------------------------------------------------------------------------
# REPA-E's trainable autoencoders (End2End-Diffusion/REPA-E ``models/autoencoder.py``, the LDM KL-VAE)


class VAE(torch.nn.Module):
    """A KL autoencoder in the LDM layout (Rombach et al. 2022), trainable end to end (REPA-E).

    ``len(ch_mult)`` levels of ``ch * m`` channels; the encoder has ``num_res_blocks`` ResNet blocks per
    level, the decoder one more; attention follows every block of a level whose resolution
    (``resolution / 2**level``) is in ``attn_resolutions``, and the middle of both. ``quant_conv`` gives
    the ``2 z_channels`` posterior moments. Built from diffusers' ``Encoder`` / ``Decoder`` blocks, so
    the parameter names are those of diffusers' ``AutoencoderKL``; ``from_ldm_state_dict`` and
    ``to_ldm_state_dict`` convert from and to the LDM names of REPA-E's released checkpoints. No latent
    scale: REPA-E normalises the latents with a BatchNorm inside the SiT.
    """

    bounded = False

    def __init__(self, ch_mult=(1, 2, 4, 4), z_channels: int = 4, ch: int = 128, num_res_blocks: int = 2,
                 attn_resolutions=(16,), resolution: int = 256, in_channels: int = 3, out_ch: int = 3):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder, Encoder

        channels = tuple(ch * m for m in ch_mult)
        attn = [resolution // 2**level in attn_resolutions for level in range(len(ch_mult))]
        down = tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn)
        up = tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn))
        self.encoder = Encoder(in_channels, z_channels, down, channels, num_res_blocks, 32, "silu", True)
        self.decoder = Decoder(z_channels, out_ch, up, channels, num_res_blocks, 32, "silu")
        self.quant_conv = torch.nn.Conv2d(2 * z_channels, 2 * z_channels, 1)
        self.post_quant_conv = torch.nn.Conv2d(z_channels, z_channels, 1)
        self.latent_channels = z_channels
        self.downsample = 2 ** (len(ch_mult) - 1)

    def encode(self, x: torch.Tensor):
        """The posterior q(z | x) of images in [-1, 1]: ``.mean``, ``.logvar`` (clamped to [-30, 20]),
        ``.std``, ``.sample()``, ``.kl()``."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (about [-1, 1]) from latents."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor):
        """``(posterior, z, reconstruction)`` with z a posterior sample, as REPA-E's ``AutoencoderKL``."""
        posterior = self.encode(x)
        z = posterior.sample()
        return posterior, z, self.decode(z)


class VAECodec:
    """A ``VAE`` seen as a codec by the samplers and grids: ``decode`` with its current weights, no
    gradient. REPA-E's latents carry no scale (its SiT normalises them with its own BatchNorm)."""

    bounded = False

    def __init__(self, vae: VAE):
        self.vae = vae
        self.latent_channels, self.downsample = vae.latent_channels, vae.downsample

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(next(self.vae.parameters()).dtype))


def load_vae_weights(vae: VAE, source, flag: str = "--vae-ckpt") -> None:
    """A VAE's weights, strictly: a file (REPA-E's released format with LDM names, ours, or a REPA-E
    training checkpoint's ``vae``) or a state dict already read. Anything else (a ``train.py``
    checkpoint, a file of other weights) is refused in one line that says what it holds."""
    if isinstance(source, dict):
        sd, where = source, "the checkpoint's vae"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{flag} {path}: no such file (REPA-E's VAE weights, e.g. pretrained/sdvae/sdvae-f8d4.pt)")
        sd, where = _read_weights(path), f"{flag} {path}"
    sd = vae_state_dict(sd, where)
    if any(k.startswith("encoder.down.") for k in sd):
        sd = from_ldm_state_dict(sd)
    try:
        vae.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise ValueError(f"{where} does not fit this VAE ({(lines[1] if len(lines) > 1 else lines[0]).strip()}); is "
                         "it a checkpoint of the other architecture (--vae f8d4 / f16d32)?") from None


def _read_weights(path: Path):
    """A weights file; training checkpoints (RNG states and arguments beside the weights) need full unpickling."""
    from common.checkpoint import load_checkpoint

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return load_checkpoint(path)


def vae_state_dict(obj, where: str) -> dict:
    """The VAE's state dict in ``obj`` (itself, or a REPA-E training checkpoint's ``vae``), else one line
    saying what ``obj`` holds."""
    from common.checkpoint import CheckpointError

    if isinstance(obj, dict) and isinstance(obj.get("vae"), dict):
        obj = obj["vae"]  # a REPA-E training checkpoint
    keys = [str(k) for k in obj] if isinstance(obj, dict) else []
    if keys and all(isinstance(v, torch.Tensor) for v in obj.values()) and any(k.startswith("encoder.") for k in keys):
        return obj
    held = (", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")) if keys else f"a {type(obj).__name__}"
    kind = "a training checkpoint without a VAE" if {"model", "ema"} <= set(keys) else "not a VAE's weights"
    raise CheckpointError(f"{where} is {kind} (it holds {held}); pass a VAE's weights: REPA-E's released "
                          ".pt (e.g. pretrained/sdvae/sdvae-f8d4.pt), save_vae_weights.py's {vae-name}.pt or a "
                          "train_repae.py checkpoint")


VAE_models = {
    "f8d4": partial(VAE, ch_mult=(1, 2, 4, 4), z_channels=4),        # SD-VAE's layout: 4 x 32 x 32 for 256 px
    "f16d32": partial(VAE, ch_mult=(1, 1, 2, 2, 4), z_channels=32),  # VA-VAE's: 32 x 16 x 16, attention at 16 x 16
    "tiny-f4d4": partial(VAE, ch_mult=(1, 2, 2), z_channels=4, ch=32, num_res_blocks=1, attn_resolutions=(4,),
                         resolution=16),  # tests and the demo: 16 px images to 4 x 4 x 4
}

# LDM names (REPA-E's checkpoints) and ours (diffusers'), block by block: {i} level, {j} block, {m} encoder or
# decoder. diffusers numbers the decoder's levels from the lowest resolution: LDM's up.{i} is up_blocks.{n - 1 - i}.
_BLOCKS = [
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.attn.{j}.", "encoder.down_blocks.{i}.attentions.{j}."),
    ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
    ("decoder.up.{r}.block.{j}.", "decoder.up_blocks.{i}.resnets.{j}."),
    ("decoder.up.{r}.attn.{j}.", "decoder.up_blocks.{i}.attentions.{j}."),
    ("decoder.up.{r}.upsample.", "decoder.up_blocks.{i}.upsamplers.0."),
    ("{m}.mid.block_1.", "{m}.mid_block.resnets.0."),
    ("{m}.mid.block_2.", "{m}.mid_block.resnets.1."),
    ("{m}.mid.attn_1.", "{m}.mid_block.attentions.0."),
    ("{m}.norm_out.", "{m}.conv_norm_out."),
]
_LEAVES = {"nin_shortcut": "conv_shortcut", "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
           "proj_out": "to_out.0"}


def _pattern(template: str) -> str:
    import re

    regex = re.escape(template)
    for field, group in (("m", r"(?P<m>encoder|decoder)"), ("i", r"(?P<i>\d+)"), ("r", r"(?P<r>\d+)"),
                         ("j", r"(?P<j>\d+)")):
        regex = regex.replace(re.escape("{" + field + "}"), group)
    return regex


def _rename(sd: dict, to_ldm: bool) -> dict:
    import re

    source = 1 if to_ldm else 0
    levels = [int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down(?:_blocks)?\.(\d+)\.", k))]
    if not levels:
        raise ValueError("not a KL-VAE state dict: it has no encoder levels")
    n = max(levels) + 1
    leaves = {v: k for k, v in _LEAVES.items()} if to_ldm else _LEAVES
    out = {}
    for key, value in sd.items():
        new = key
        for pair in _BLOCKS:
            m = re.match(_pattern(pair[source]), key)
            if m:
                fields = m.groupdict()
                if "r" in fields:
                    fields["i"] = n - 1 - int(fields.pop("r"))
                elif "i" in fields and "{r}" in pair[1 - source]:
                    fields["r"] = n - 1 - int(fields.pop("i"))
                block, leaf = pair[1 - source].format(**fields), key[m.end():]
                name, _, kind = leaf.rpartition(".")
                attention = ".attn" in block or ".attentions." in block
                if name in leaves and (attention or name in ("nin_shortcut", "conv_shortcut")):
                    leaf = f"{leaves[name]}.{kind}"
                    if attention and value.ndim == (2 if to_ldm else 4):  # LDM: 1x1 convs; diffusers: linear
                        value = value[:, :, None, None] if to_ldm else value[:, :, 0, 0]
                new = block + leaf
                break
        out[new] = value
    return out


def from_ldm_state_dict(sd: dict) -> dict:
    """REPA-E / LDM parameter names -> ours (diffusers ``AutoencoderKL``'s); the exact inverse of
    ``to_ldm_state_dict``."""
    return _rename(sd, to_ldm=False)


def to_ldm_state_dict(sd: dict) -> dict:
    """Ours -> REPA-E / LDM parameter names, the format of REPA-E's released VAE checkpoints."""
    return _rename(sd, to_ldm=True)
