"""What a loader batch gives the model, by the form its dataset stores: ``(raw, x, y)``, the clean images
in [0, 255] for the alignment encoders (None where the data hold no images), the model input and the
conditions.

Each dataset class takes its form from one of these classes (or writes its own ``model_input``) and
declares ``latent_shape``: the (C, h, w) of the latents it stores, None for images (the codec encodes them).
"""

from __future__ import annotations

import torch


def random_flip(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of each image with probability 1/2, drawn from the global RNG."""
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x), flip


class Images:
    """Images in [-1, 1] with labels: DiT's random flip (the encoders see the same flip), then the codec."""

    latent_shape = None

    def model_input(self, batch, codec, flip: bool = True):
        x, y = batch
        x = random_flip(x)[0] if flip else x
        return (x + 1) * 127.5, codec.encode(x), y


class StoredImages:
    """uint8 images with labels (REPA-E's ``images.h5``), used as stored: no flip."""

    latent_shape = None

    def model_input(self, batch, codec, flip: bool = True):
        raw, y = batch
        raw = raw.float()
        return raw, codec.encode(raw / 127.5 - 1), y


class Moments:
    """uint8 images beside their latents' moments cat(mean, std), used as stored (no flip), as REPA, REG and
    REPA-E do: x = (mean + std eps) times ``latent_scale`` (None: the codec's scale)."""

    latent_scale: float | None = None
    moments_shape: tuple[int, ...]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.moments_shape[0] // 2, *self.moments_shape[1:])

    def model_input(self, batch, codec, flip: bool = True):
        raw, moments, y = batch
        mean, std = moments.chunk(2, dim=1)
        z = mean + std * torch.randn_like(mean)
        return raw.float(), z if self.latent_scale == 1 else z * (self.latent_scale or codec.scale), y


def latent_shape(dataset, codec, image_size: int) -> tuple[int, int, int]:
    """The (C, h, w) the model sees: the stored latents', else the codec's at ``image_size``."""
    if dataset is not None and dataset.latent_shape is not None:
        return tuple(dataset.latent_shape)
    size = image_size // codec.downsample
    return codec.latent_channels, size, size
