"""End to end, every sampler with an exact denoiser: samples must be training images of their class.

For a finite training set the optimal denoiser is known in closed form: E[x_0 | x_t, y] is the
softmax-weighted mean of the class's images, weights ``exp(-|x_t - alpha_t x_i|^2 / 2 sigma_t^2)``.
A sampler that integrates the reverse process correctly (time direction, respacing, variances,
guidance, the last step) must therefore end on a training image of the requested class, and
without guidance draw each of the class's images equally often: a model fed the wrong timesteps
still lands on images, but on some far more often than others (the last test).
This checks ``diffusion.pipeline.generate`` as ``sample.py``, ``sample_ddp.py`` and ``generate.py``
use it, which the parity tests (fixed stand-in models) cannot: they compare against the originals,
not against the distribution being sampled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from data.procedural import render_batch, to_tensor
from diffusion import create_diffusion
from diffusion.guidance import combine_cfg
from diffusion.pipeline import generate
from diffusion.transport import interpolant

NUM_CLASSES, PER_CLASS, SIZE = 10, 3, 8
IMAGES = to_tensor(render_batch(np.arange(NUM_CLASSES * PER_CLASS), 0, SIZE, NUM_CLASSES)).double()
LABELS = torch.arange(len(IMAGES)) % NUM_CLASSES


def posterior_mean(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t = alpha x_0 + sigma eps, y] over ``IMAGES``; ``y == NUM_CLASSES`` is unconditional."""
    flat, data = x.double().flatten(1), IMAGES.flatten(1)
    alpha, sigma = alpha.double().reshape(-1, 1), sigma.double().reshape(-1, 1)
    sq_dist = ((flat[:, None, :] - alpha[:, :, None] * data[None]) ** 2).sum(-1)
    allowed = (LABELS[None] == y[:, None]) | (y[:, None] == NUM_CLASSES)
    weights = torch.softmax((-sq_dist / (2 * sigma**2)).masked_fill(~allowed, -torch.inf), dim=1)
    return (weights @ data).view(x.shape)


def label_table_with_null_class() -> nn.Module:
    """What ``has_null_class`` reads: a label table with the null row, so guidance is allowed."""
    table = nn.Module()
    table.num_classes = NUM_CLASSES
    table.embedding_table = nn.Embedding(NUM_CLASSES + 1, 1)
    return table


class ExactDiT(nn.Module):
    """DiT's interface (eps and a learned-range variance value) around the exact denoiser."""

    learn_sigma = True

    def __init__(self, variance_value: float):
        super().__init__()
        self.y_embedder = label_table_with_null_class()
        self.alphas_cumprod = torch.tensor(create_diffusion("").alphas_cumprod)
        self.variance_value = variance_value

    def forward(self, x, t, y):
        alpha_bar = self.alphas_cumprod[t.long()]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = posterior_mean(x, alpha, sigma, y)
        eps = (x.double() - alpha.view(-1, 1, 1, 1) * x0) / sigma.view(-1, 1, 1, 1)
        return torch.cat([eps.to(x.dtype), torch.full_like(x, self.variance_value)], dim=1)

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        return combine_cfg(self.forward(torch.cat([half, half]), t, y), cfg_scale, 3)


class ExactEpsOnly(ExactDiT):
    """The U-Net's interface: eps only, so sampling uses DDPM's fixed posterior variance."""

    learn_sigma = False

    def forward(self, x, t, y):
        return super().forward(x, t, y)[:, :3]


class ExactSiT(nn.Module):
    """SiT's interface (velocity, no projections) around the exact denoiser on REPA's paths."""

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


def nearest_training_image(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean absolute distance to the nearest training image, that image's index) per sample."""
    dist = (samples.double().flatten(1)[:, None] - IMAGES.flatten(1)[None]).abs().mean(-1)
    best = dist.min(dim=1)
    return best.values, best.indices


# REPA's Euler-Maruyama sampler ends with a step 0.04 -> 0 along the SDE drift, whose score term
# leaves 0.04 eps of noise in the sample (mean absolute value 0.04 sqrt(2 / pi) = 0.032), as the
# original does; every other sampler ends on the image itself.
TOLERANCE = {"ddpm": 0.02, "ddim": 0.02, "ode": 0.02, "sde": 0.06}

CASES = {  # name: (model factory, generate() keyword arguments)
    "ddpm50": (lambda: ExactDiT(0.0), dict(sampler="ddpm", num_steps=50, clip_denoised=True)),
    "ddpm50_fixed_large": (lambda: ExactDiT(1.0), dict(sampler="ddpm", num_steps=50, clip_denoised=True)),
    "ddpm50_fixed_small": (lambda: ExactEpsOnly(0.0), dict(sampler="ddpm", num_steps=50, clip_denoised=True)),
    "ddpm50_cfg4": (lambda: ExactDiT(0.0), dict(sampler="ddpm", num_steps=50, cfg_scale=4.0, clip_denoised=True)),
    "ddim25": (lambda: ExactDiT(0.0), dict(sampler="ddim", num_steps=25)),
    "ddim25_eta1": (lambda: ExactDiT(0.0), dict(sampler="ddim", num_steps=25, eta=1.0, clip_denoised=True)),
    "ode50_linear": (lambda: ExactSiT("linear"), dict(sampler="ode", num_steps=50)),
    "ode25_heun_cosine": (lambda: ExactSiT("cosine"), dict(sampler="ode", num_steps=25, heun=True, path_type="cosine")),
    "sde50_linear": (lambda: ExactSiT("linear"), dict(sampler="sde", num_steps=50)),
    "sde50_cfg2_interval": (
        lambda: ExactSiT("linear"),
        dict(sampler="sde", num_steps=50, cfg_scale=2.0, guidance_low=0.0, guidance_high=0.7),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_samples_from_the_exact_denoiser_are_training_images_of_their_class(name):
    make_model, kwargs = CASES[name]
    torch.manual_seed(0)
    labels = torch.arange(2 * NUM_CLASSES) % NUM_CLASSES
    noise = torch.randn(len(labels), 3, SIZE, SIZE)
    with torch.no_grad():
        samples = generate(make_model(), noise, labels, num_classes=NUM_CLASSES, **kwargs).float()
    distance, index = nearest_training_image(samples)
    assert torch.equal(LABELS[index], labels), f"{name}: samples of another class"
    assert distance.max() < TOLERANCE[kwargs["sampler"]], (
        f"{name}: samples {distance.max():.3f} (mean absolute, pixels in [-1, 1]) away from any training image"
    )


class HalvedTimeDiT(ExactDiT):
    """A broken sampler in disguise: the model is told timesteps half the true ones."""

    def forward(self, x, t, y):
        return super().forward(x, t // 2, y)


CHI2_999 = 45.31  # 99.9% quantile of chi-square with 20 degrees of freedom (scipy.stats.chi2.ppf)
UNGUIDED = [name for name, (_, kwargs) in CASES.items() if kwargs.get("cfg_scale", 1.0) == 1.0]


def image_frequencies_chi2(make_model, kwargs, n: int = 450) -> float:
    """Chi-square of how often each training image is drawn, against the uniform choice within a class."""
    torch.manual_seed(0)
    labels = torch.arange(n) % NUM_CLASSES
    with torch.no_grad():
        samples = generate(make_model(), torch.randn(n, 3, SIZE, SIZE), labels, num_classes=NUM_CLASSES, **kwargs)
    counts = torch.bincount(nearest_training_image(samples)[1], minlength=len(IMAGES)).double()
    expected = n / len(IMAGES)
    return float(((counts - expected) ** 2 / expected).sum())  # 30 cells, 10 class totals fixed: 20 dof


@pytest.mark.parametrize("name", UNGUIDED)
def test_unguided_samplers_draw_each_training_image_equally_often(name):
    """The exact score's distribution is uniform over the class's images; samplers must keep it so."""
    make_model, kwargs = CASES[name]
    assert image_frequencies_chi2(make_model, kwargs) < CHI2_999


def test_frequency_check_catches_a_wrong_time_grid():
    """Halved timesteps still end on training images, but draw some far more often than others."""
    kwargs = dict(sampler="ddpm", num_steps=50, clip_denoised=True)
    assert image_frequencies_chi2(lambda: HalvedTimeDiT(0.0), kwargs) > 4 * CHI2_999
