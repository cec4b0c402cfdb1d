"""Exact denoisers of a small training set, behind each model family's interface (tests' stand-ins).

For a finite training set the optimal denoiser is known in closed form: E[x_0 | x_t, y] is the
softmax-weighted mean of the class's images, weights ``exp(-|x_t - alpha_t x_i|^2 / 2 sigma_t^2)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffusion import create_diffusion
from diffusion.transport import interpolant
from imagedata.procedural import render_batch, to_tensor

NUM_CLASSES, PER_CLASS, SIZE = 10, 3, 8
IMAGES = to_tensor(render_batch(np.arange(NUM_CLASSES * PER_CLASS), 0, SIZE, NUM_CLASSES)).double()
LABELS = torch.arange(len(IMAGES)) % NUM_CLASSES


def posterior_mean(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
                   data: torch.Tensor | None = None) -> torch.Tensor:
    """E[x_0 | x_t = alpha x_0 + sigma eps, y] over ``IMAGES`` (or the rows of ``data``, one per image);
    ``y == NUM_CLASSES`` is unconditional."""
    flat, data = x.double().flatten(1), IMAGES.flatten(1) if data is None else data
    alpha, sigma = alpha.double().reshape(-1, 1), sigma.double().reshape(-1, 1)
    sq_dist = ((flat[:, None, :] - alpha[:, :, None] * data[None]) ** 2).sum(-1)
    allowed = (LABELS[None] == y[:, None]) | (y[:, None] == NUM_CLASSES)
    weights = torch.softmax((-sq_dist / (2 * sigma**2)).masked_fill(~allowed, -torch.inf), dim=1)
    return (weights @ data).view(x.shape)


def label_table_with_null_class() -> nn.Module:
    """What ``diffusion.network.contract`` reads for the null class: a label table with the null row, so guidance is allowed."""
    table = nn.Module()
    table.num_classes = NUM_CLASSES
    table.embedding_table = nn.Embedding(NUM_CLASSES + 1, 1)
    return table


class ExactDiT(nn.Module):
    """DiT's interface (eps and a learned-range variance value) around the exact denoiser. Between
    integer steps (the ODE and SDE samplers ask for those) log sigma is interpolated linearly."""

    prediction, learn_sigma, guided_channels = "eps", True, 3

    def __init__(self, variance_value: float):
        super().__init__()
        self.y_embedder = label_table_with_null_class()
        abar = torch.tensor(create_diffusion("").alphas_cumprod)
        self.log_sigmas = ((1 - abar) / abar).sqrt().log()
        self.variance_value = variance_value

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        low = t.double().floor().long().clamp(0, len(self.log_sigmas) - 2)
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[low + 1], t.double() - low)
        return 1 / (1 + (2 * log_sigma).exp())

    def forward(self, x, t, y):
        alpha_bar = self.alpha_bar(t)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = posterior_mean(x, alpha, sigma, y)
        eps = (x.double() - alpha.view(-1, 1, 1, 1) * x0) / sigma.view(-1, 1, 1, 1)
        return torch.cat([eps.to(x.dtype), torch.full_like(x, self.variance_value)], dim=1)



class ExactEpsOnly(ExactDiT):
    """The U-Net's interface: eps only, so sampling uses DDPM's fixed posterior variance."""

    learn_sigma, guided_channels = False, None

    def forward(self, x, t, y):
        return super().forward(x, t, y)[:, :3]


class ExactSiT(nn.Module):
    """SiT's interface (velocity, no projections) around the exact denoiser on REPA's paths."""

    prediction = "velocity"
    z_dims: list = []
    cls_token_dim = None
    num_classes = NUM_CLASSES

    def __init__(self, path_type: str):
        super().__init__()
        self.path_type = path_type
        self.y_embedder = label_table_with_null_class()

    def forward(self, x, t, y):
        alpha, sigma, d_alpha, d_sigma = interpolant(t.double(), self.path_type)
        x0 = posterior_mean(x, alpha, sigma, y)
        shape = (-1, 1, 1, 1)
        eps = (x.double() - alpha.view(shape) * x0) / sigma.view(shape)
        d_alpha = torch.as_tensor(d_alpha, dtype=torch.float64).reshape(-1, 1, 1, 1)
        d_sigma = torch.as_tensor(d_sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        return (d_alpha * x0 + d_sigma * eps).to(x.dtype), []


class ExactEDM(nn.Module):
    """EDM's interface, ``D(x; sigma)`` on its own scale ``x = x0 + sigma eps`` (no null class, no guidance),
    around the exact denoiser."""

    prediction = "x0"

    def forward(self, x, sigma, class_labels):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(len(x))
        return posterior_mean(x, torch.ones_like(sigma), sigma, class_labels).to(x.dtype)


TOKEN_DIM = 6
TOKENS = torch.randn(len(IMAGES), TOKEN_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


class ExactREG(ExactSiT):
    """REG's interface (velocity of the latents and of the class token) around the exact denoiser of
    (image, token) pairs: training image i comes with its own token ``TOKENS[i]``, so the two states
    must end on the same pair. ``last_token`` is the token of the latest call."""

    cls_token_dim = TOKEN_DIM

    def forward(self, x, t, y, cls_token=None):
        self.last_token = cls_token.clone()
        alpha, sigma, d_alpha, d_sigma = (torch.as_tensor(c, dtype=torch.float64).reshape(-1, 1).expand(len(x), 1)
                                          for c in interpolant(t.double(), self.path_type))
        joint = torch.cat([x.double().flatten(1), cls_token.double()], 1)
        x0 = posterior_mean(joint, alpha, sigma, y, torch.cat([IMAGES.flatten(1), TOKENS], 1))
        v = d_alpha * x0 + d_sigma * (joint - alpha * x0) / sigma
        k = x[0].numel()
        return v[:, :k].reshape(x.shape).to(x.dtype), [], v[:, k:].to(cls_token.dtype)


def nearest_training_image(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean absolute distance to the nearest training image, that image's index) per sample."""
    dist = (samples.double().flatten(1)[:, None] - IMAGES.flatten(1)[None]).abs().mean(-1)
    best = dist.min(dim=1)
    return best.values, best.indices
