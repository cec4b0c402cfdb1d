"""The denoiser interface (diffusion/denoiser.py): one noise scale for every model, conversions in one
place, and a model of one family read exactly by the samplers of the other."""

from __future__ import annotations

import math

import pytest
import torch
from exact_denoisers import NUM_CLASSES, SIZE, ExactDiT, ExactEDM, ExactSiT

from diffusion import create_diffusion
from diffusion.denoiser import (
    DDPMDenoiser,
    FlowDenoiser,
    Prediction,
    ddpm_sigmas,
    denoiser_for,
    eps_model,
    flow_sigma,
    flow_time,
    noised,
    velocity_model,
)
from diffusion.transport import interpolate, target_velocity
from models import create_model

ABAR = create_diffusion("").alphas_cumprod


def test_conversions_between_x0_eps_velocity_and_score():
    x0, eps, sigma = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64), \
        torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    pred = Prediction(x0, eps, sigma)
    for path in ("linear", "cosine"):
        t = flow_time(sigma, path)
        torch.testing.assert_close(pred.velocity(t, path), target_velocity(x0, eps, t, path))
    torch.testing.assert_close(pred.velocity(flow_time(sigma, "linear")), eps - x0)
    torch.testing.assert_close(pred.score(), -eps / sigma.view(-1, 1, 1, 1))


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_flow_time_and_sigma_are_inverse_with_the_ends_included(path):
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    sigma = flow_sigma(t, path)
    assert sigma[0] == 0 and sigma[-1] > 1e15  # inf on the linear path; cos(pi / 2) is 6e-17 in floats
    torch.testing.assert_close(flow_time(sigma, path), t)
    # sigma = noise / signal of the path: x_t = alpha (x0 + sigma eps)
    alpha, noise = (1 - t[1:-1], t[1:-1]) if path == "linear" else (torch.cos(t[1:-1] * math.pi / 2),
                                                                      torch.sin(t[1:-1] * math.pi / 2))
    torch.testing.assert_close(sigma[1:-1], noise / alpha)


def test_ddpm_timestep_is_exact_on_the_table_and_interpolates_log_sigma_between():
    den = DDPMDenoiser(ExactDiT(0.0), ABAR)
    sigmas = ddpm_sigmas(ABAR)
    steps = torch.tensor([0, 1, 250, 998, 999])
    torch.testing.assert_close(den.timestep(sigmas[steps]), steps.double(), atol=1e-9, rtol=0)
    between = torch.exp((sigmas[10].log() + sigmas[11].log()) / 2)
    torch.testing.assert_close(den.timestep(between.view(1)), torch.tensor([10.5], dtype=torch.float64))
    assert den.sigma_min == pytest.approx(float(sigmas[0])) and den.sigma_max == pytest.approx(157.4, abs=0.1)
    out = den.timestep(torch.tensor([0.0, 1e-6, 1e4, math.inf], dtype=torch.float64))
    assert out.tolist() == [0.0, 0.0, 999.0, 999.0]  # clamped to the model's range


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_a_ddpm_model_in_a_flow_sampler_answers_the_flow_model_of_the_same_data(path):
    """Both stand-ins are the exact denoiser of one training set: read through the adapter, the DDPM
    model's velocity at (x_t, t) must be the flow model's."""
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x0 = torch.randn(4, 3, SIZE, SIZE, generator=gen)
    x_t = interpolate(x0, torch.randn(4, 3, SIZE, SIZE, generator=gen), t, path)
    y = torch.tensor([0, 3, 7, NUM_CLASSES])
    read = velocity_model(DDPMDenoiser(ExactDiT(0.0), ABAR), path)
    v, zs = read(x_t, t, y=y)
    assert zs == []
    torch.testing.assert_close(v, ExactSiT(path)(x_t, t, y)[0], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_a_flow_model_in_a_ddpm_sampler_answers_the_ddpm_model_of_the_same_data(path):
    gen = torch.Generator().manual_seed(1)
    steps = torch.tensor([0, 100, 500, 999])
    abar = torch.tensor(ABAR)[steps].float().view(-1, 1, 1, 1)
    x0, eps = torch.randn(4, 3, SIZE, SIZE, generator=gen), torch.randn(4, 3, SIZE, SIZE, generator=gen)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    y = torch.tensor([1, 2, NUM_CLASSES, 9])
    read = eps_model(FlowDenoiser(ExactSiT(path), path), ABAR)
    torch.testing.assert_close(read(x_t, steps, y=y), ExactDiT(0.0)(x_t, steps, y)[:, :3], atol=2e-4, rtol=1e-4)


def test_every_family_read_through_its_adapter_gives_the_same_x0_and_eps():
    """The DDPM, flow (both paths) and EDM stand-ins are the exact denoiser of one training set; at the same
    variance-preserving input and noise level their adapters must agree, and ``x0 + sigma eps`` must be
    the EDM-scale input ``sqrt(1 + sigma^2) x_vp``."""
    gen = torch.Generator().manual_seed(2)
    sigma = ddpm_sigmas(ABAR)[torch.tensor([30, 300, 600, 850])]  # on the DDPM table, inside EDM's range
    x0, eps = torch.randn(4, 3, SIZE, SIZE, generator=gen), torch.randn(4, 3, SIZE, SIZE, generator=gen)
    x_vp = noised(x0, sigma, eps)
    y = torch.tensor([0, 4, 9, NUM_CLASSES - 1])
    answers = [denoiser_for(model, ABAR, path)(x_vp, sigma, y, x0_dtype=torch.float64)
               for model, path in ((ExactDiT(0.0), "linear"), (ExactSiT("linear"), "linear"),
                                   (ExactSiT("cosine"), "cosine"), (ExactEDM(), "linear"))]
    edm_scale = (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt() * x_vp.double()
    for pred in answers:
        torch.testing.assert_close(pred.x0 + sigma.view(-1, 1, 1, 1) * pred.eps.double(), edm_scale,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred.x0, answers[0].x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred.eps, answers[0].eps, atol=1e-4, rtol=1e-4)


def test_native_samplers_call_the_model_itself():
    dit, sit = ExactDiT(0.0), ExactSiT("linear")
    assert eps_model(denoiser_for(dit, ABAR), ABAR) is dit
    assert velocity_model(denoiser_for(sit, path_type="linear"), "cosine") is sit


def test_adapters_are_differentiable_with_a_per_sample_sigma_and_finite_at_infinite_noise():
    torch.manual_seed(0)
    for model in (create_model("DiT-Ti/4", input_size=8, in_channels=3, num_classes=4),
                  create_model("SiT-Ti/4", input_size=8, in_channels=3, num_classes=4)):
        den = denoiser_for(model, ABAR, "linear")
        x = torch.randn(3, 3, 8, 8, requires_grad=True)
        sigma = torch.tensor([0.3, 2.0, 20.0], dtype=torch.float64, requires_grad=True)
        y = torch.tensor([0, 1, 2])
        pred = den(x, sigma, y)
        (pred.x0.square().sum() + pred.eps.square().sum()).backward()
        assert x.grad.abs().sum() > 0 and sigma.grad.abs().sum() > 0
        alone = den(x[1:2].detach(), sigma[1:2].detach(), y[1:2])
        torch.testing.assert_close(alone.x0, pred.x0[1:2].detach(), atol=1e-5, rtol=1e-5)
        at_inf = den(x.detach(), torch.full((3,), math.inf, dtype=torch.float64), y)
        assert torch.isfinite(at_inf.x0).all() and torch.isfinite(at_inf.eps).all()


def test_a_model_that_declares_no_prediction_is_refused():
    with pytest.raises(ValueError, match="declares no prediction"):
        denoiser_for(torch.nn.Linear(2, 2), ABAR)


def test_latents_leave_the_models_own_normalisation_for_the_decoder():
    """REPA-E decodes ``z / latents_scale + latents_bias`` with the EMA's BatchNorm statistics."""
    model = create_model("SiT-Ti/4", input_size=8, in_channels=3, num_classes=4, bn_momentum=0.1)
    plain = denoiser_for(create_model("SiT-Ti/4", input_size=8, in_channels=3, num_classes=4), path_type="linear")
    z = torch.randn(2, 3, 4, 4)
    assert plain.denormalize(z) is z
    model.init_bn(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.5, -1.0, 2.0]))
    stats = model.extract_latents_stats()
    expected = z / stats["latents_scale"] + stats["latents_bias"]
    torch.testing.assert_close(denoiser_for(model, path_type="linear").denormalize(z), expected)
