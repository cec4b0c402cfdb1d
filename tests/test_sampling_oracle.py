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

import pytest
import torch
from exact_denoisers import (
    IMAGES,
    LABELS,
    NUM_CLASSES,
    SIZE,
    TOKENS,
    ExactDiT,
    ExactEDM,
    ExactEpsOnly,
    ExactREG,
    ExactSiT,
    nearest_training_image,
)

from diffusion.pipeline import generate

# REPA's Euler-Maruyama sampler ends with a step 0.04 -> 0 along the SDE drift, whose score term
# leaves 0.04 eps of noise in the sample (mean absolute value 0.04 sqrt(2 / pi) = 0.032), as the
# original does; every other sampler ends on the image itself.
TOLERANCE = {"ddpm": 0.02, "ddim": 0.02, "ode": 0.02, "sde": 0.06, "edm": 0.02}

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
    # every family by every sampler, through diffusion.denoiser
    "dit_ode50_linear": (lambda: ExactDiT(0.0), dict(sampler="ode", num_steps=50)),
    "dit_ode25_heun_cosine": (lambda: ExactDiT(0.0), dict(sampler="ode", num_steps=25, heun=True, path_type="cosine")),
    "dit_sde50_cfg2_interval": (
        lambda: ExactDiT(0.0), dict(sampler="sde", num_steps=50, cfg_scale=2.0, guidance_high=0.7),
    ),
    "unet_sde50_linear": (lambda: ExactEpsOnly(0.0), dict(sampler="sde", num_steps=50)),
    "unet_ode50_cosine": (lambda: ExactEpsOnly(0.0), dict(sampler="ode", num_steps=50, path_type="cosine")),
    "unet_ddim25_cfg3": (lambda: ExactEpsOnly(0.0), dict(sampler="ddim", num_steps=25, cfg_scale=3.0)),
    "sit_ddpm50": (lambda: ExactSiT("linear"), dict(sampler="ddpm", num_steps=50, clip_denoised=True)),
    "sit_ddpm50_cfg4_interval": (
        lambda: ExactSiT("linear"),
        dict(sampler="ddpm", num_steps=50, cfg_scale=4.0, guidance_low=0.1, clip_denoised=True),
    ),
    "sit_ddim25_cosine": (lambda: ExactSiT("cosine"), dict(sampler="ddim", num_steps=25, path_type="cosine")),
    # EDM's Heun sampler (Algorithm 2) on every family
    "dit_edm18": (lambda: ExactDiT(0.0), dict(sampler="edm", num_steps=18)),
    "dit_edm18_cfg3": (lambda: ExactDiT(0.0), dict(sampler="edm", num_steps=18, cfg_scale=3.0)),
    "dit_edm40_churn": (lambda: ExactDiT(0.0), dict(sampler="edm", num_steps=40, S_churn=40, S_min=0.05, S_max=50,
                                                    S_noise=1.003)),
    "sit_edm18_cosine": (lambda: ExactSiT("cosine"), dict(sampler="edm", num_steps=18, path_type="cosine")),
    "unet_edm18": (lambda: ExactEpsOnly(0.0), dict(sampler="edm", num_steps=18)),
    # an EDM network (x0 on EDM's scale, DMD2's ImageNet teacher) by every sampler
    "edm_model_edm18": (ExactEDM, dict(sampler="edm", num_steps=18)),
    "edm_model_ddim25": (ExactEDM, dict(sampler="ddim", num_steps=25)),
    "edm_model_ode50_cosine": (ExactEDM, dict(sampler="ode", num_steps=50, path_type="cosine")),
    "edm_model_sde50": (ExactEDM, dict(sampler="sde", num_steps=50)),
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


@pytest.mark.parametrize("sampler, kwargs", [
    ("ddpm", dict(clip_denoised=True)),
    ("ddim", dict(cfg_scale=2.0, cls_cfg_scale=2.0, guidance_high=0.8)),
    ("ode", dict(heun=True)),
    ("sde", dict(cfg_scale=2.0, cls_cfg_scale=0.0)),
])
def test_every_sampler_carries_regs_class_token_to_the_token_of_its_image(sampler, kwargs):
    """The class token is a second state: at the last model call it must sit at the token of the very
    training image the latents end on (tokens of other images are about 1.1 away, mean absolute)."""
    model = ExactREG("linear")
    torch.manual_seed(0)
    labels = torch.arange(NUM_CLASSES) % NUM_CLASSES
    with torch.no_grad():
        samples = generate(model, torch.randn(len(labels), 3, SIZE, SIZE), labels, sampler=sampler, num_steps=50,
                           num_classes=NUM_CLASSES, **kwargs).float()
    distance, index = nearest_training_image(samples)
    assert torch.equal(LABELS[index], labels) and distance.max() < TOLERANCE[sampler]
    token_error = (model.last_token[: len(labels)].double() - TOKENS[index]).abs().mean(1)
    assert token_error.max() < 0.1, f"{sampler}: token {token_error.max():.3f} from its image's"
