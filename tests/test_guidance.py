"""Classifier-free guidance at sampler level (diffusion/guidance.py through diffusion.pipeline.generate):
the interval and the channel mask act as stated for every sampler and both model families; the DDPM
path guides once and draws official DiT's noise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion import create_diffusion
from diffusion.denoiser import ddpm_sigmas
from diffusion.guidance import guided_ddpm_model
from diffusion.network import contract
from diffusion.pipeline import FEW_STEP, SAMPLERS, generate
from models import create_model

NUM_CLASSES, C = 5, 4
SIGMAS = ddpm_sigmas(create_diffusion("").alphas_cumprod)
GUIDED = [s for s in SAMPLERS if s != FEW_STEP]  # a distilled generator has its guidance built in


class Channelwise(nn.Module):
    """Output channel c depends on input channel c and the label only; records every call's batch
    size and REPA time ``t = sigma / (1 + sigma)``. ``prediction`` picks the family."""

    def __init__(self, prediction: str, learn_sigma: bool = False):
        super().__init__()
        self.prediction, self.learn_sigma = prediction, learn_sigma
        self.num_classes = NUM_CLASSES
        self.y_embedder = nn.Module()
        self.y_embedder.num_classes = NUM_CLASSES
        self.y_embedder.embedding_table = nn.Embedding(NUM_CLASSES + 1, 2 * C)
        self.calls = []

    def forward(self, x, t, y):
        if self.prediction == "eps":
            tau = t.double()
            low = tau.floor().long().clamp(max=998)
            sigma = torch.lerp(SIGMAS[low].log(), SIGMAS[low + 1].log(), tau - low).exp()
            repa_t = sigma / (1 + sigma)
        else:
            repa_t = t.double()
        self.calls.append((len(x), round(float(repa_t[0]), 6)))
        emb = self.y_embedder.embedding_table(y)[:, :, None, None]
        out = 0.5 * x + emb[:, :C]
        return torch.cat([out, torch.tanh(emb[:, C:]).expand_as(out)], 1) if self.learn_sigma else (
            out if self.prediction == "eps" else (out, []))


def run(model, sampler, **kw):
    torch.manual_seed(0)
    noise, y = torch.randn(3, C, 4, 4), torch.tensor([0, 2, 4])
    extra = dict(clip_denoised=False) if sampler in ("ddpm", "ddim") else {}
    with torch.no_grad():
        return generate(model, noise, y, sampler=sampler, num_steps=8, num_classes=NUM_CLASSES, **extra, **kw)


@pytest.mark.parametrize("prediction", ["eps", "velocity"])
@pytest.mark.parametrize("sampler", GUIDED)
def test_guidance_runs_doubled_exactly_inside_the_interval(sampler, prediction):
    model = Channelwise(prediction)
    run(model, sampler, cfg_scale=3.0, guidance_low=0.3, guidance_high=0.8)
    inside = [size == 6 for size, _ in model.calls]
    expected = [0.3 <= t <= 0.8 for _, t in model.calls]
    assert inside == expected and any(inside) and not all(inside)
    assert all(size in (3, 6) for size, _ in model.calls)


@pytest.mark.parametrize("prediction", ["eps", "velocity"])
@pytest.mark.parametrize("sampler", GUIDED)
def test_guidance_acts_on_the_masked_channels_only(sampler, prediction):
    """With a channelwise model, the unguided channels do not depend on the guidance scale and the
    guided ones do (and equal those of guiding every channel)."""
    model = Channelwise(prediction)
    two = run(model, sampler, cfg_scale=2.0, guided_channels=2)
    five = run(model, sampler, cfg_scale=5.0, guided_channels=2)
    every = run(model, sampler, cfg_scale=5.0, guided_channels=C)
    torch.testing.assert_close(two[:, 2:], five[:, 2:], atol=1e-6, rtol=1e-6)
    assert (two[:, :2] - five[:, :2]).abs().max() > 1e-2
    torch.testing.assert_close(five[:, :2], every[:, :2], atol=1e-6, rtol=1e-6)
    assert (five[:, 2:] - every[:, 2:]).abs().max() > 1e-2


def test_a_dit_guides_its_first_three_channels_by_default_and_the_unet_all():
    dit = create_model("DiT-Ti/4", input_size=8, in_channels=4, num_classes=NUM_CLASSES)
    unet = create_model("UNet-Ti", input_size=8, in_channels=3, num_classes=NUM_CLASSES)
    assert contract(dit).guided_channels == 3 and contract(unet).guided_channels is None
    assert contract(create_model("SiT-Ti/4", input_size=8, in_channels=4)).guided_channels is None


def test_learned_variance_channels_are_never_guided():
    model = Channelwise("eps", learn_sigma=True)
    x, t = torch.randn(2, C, 4, 4), torch.tensor([500, 500])
    y = torch.tensor([1, NUM_CLASSES])
    out = guided_ddpm_model(model, SIGMAS, 4.0)(torch.cat([x[:1], x[:1]]), t, y)
    cond = model(x[:1], t[:1], y[:1])
    torch.testing.assert_close(out[:1, C:], cond[:, C:])  # the variance half comes from the conditional pass
    assert (out[:1, :C] - cond[:, :C]).abs().max() > 1e-3  # the eps half is guided


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_dit_ddpm_guidance_is_official_forward_with_cfg_on_a_doubled_batch(sampler):
    """Guided once, and the same random draws as official DiT's sample.py for a fixed seed."""
    torch.manual_seed(0)
    model = create_model("DiT-Ti/4", input_size=8, in_channels=4, num_classes=NUM_CLASSES).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    noise, y = torch.randn(3, C, 8, 8), torch.tensor([0, 2, 4])
    torch.manual_seed(7)
    with torch.no_grad():
        ours = generate(model, noise, y, sampler=sampler, num_steps=10, cfg_scale=4.0, num_classes=NUM_CLASSES)
    diffusion = create_diffusion("ddim10" if sampler == "ddim" else "10")
    loop = diffusion.p_sample_loop if sampler == "ddpm" else diffusion.ddim_sample_loop
    doubled = torch.cat([noise, noise])
    torch.manual_seed(7)
    with torch.no_grad():
        official = loop(model.forward_with_cfg, doubled.shape, doubled, clip_denoised=False,
                        model_kwargs=dict(y=torch.cat([y, torch.full_like(y, NUM_CLASSES)]), cfg_scale=4.0))
    assert torch.equal(ours, official.chunk(2)[0])
