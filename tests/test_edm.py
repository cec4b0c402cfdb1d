"""EDM's maths (diffusion/edm.py) against closed forms and against NVlabs/edm @ 008a4e5 (generate.py
``edm_sampler``, training/loss.py ``EDMLoss``; fixture from tests/fixtures/record_edm.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures.record_edm import GaussianDenoiser  # the recorder's closed-form denoiser

from diffusion.edm import edm_loss, edm_sampler, karras_sigmas, precond_coefficients

REF = torch.load(Path(__file__).parent / "fixtures" / "edm_reference.pt")
MU = torch.tensor([[-1.0, 0.3, 2.0]], dtype=torch.float64)  # one class, per-channel data mean
S = torch.tensor([0.2, 0.5, 1.5], dtype=torch.float64)  # and standard deviation


def test_precond_coefficients_match_table_1():
    for sigma, sigma_data in [(0.002, 0.5), (0.5, 0.5), (1.3, 0.5), (80.0, 0.5), (2.0, 1.0)]:
        c_skip, c_out, c_in, c_noise = precond_coefficients(torch.tensor(sigma, dtype=torch.float64), sigma_data)
        assert c_skip.item() == pytest.approx(sigma_data**2 / (sigma**2 + sigma_data**2), rel=1e-12)
        assert c_out.item() == pytest.approx(sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2), rel=1e-12)
        assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + sigma_data**2), rel=1e-12)
        assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-12)
        # Table 1's design: unit-variance network input and training target for data of std sigma_data
        assert (c_in**2 * (sigma**2 + sigma_data**2)).item() == pytest.approx(1, rel=1e-12)
        target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
        assert target_var.item() == pytest.approx(1, rel=1e-12)
    batch = precond_coefficients(torch.tensor([0.1, 1.0, 10.0]).reshape(-1, 1, 1, 1))
    assert all(c.shape == (3, 1, 1, 1) and c.dtype == torch.float32 for c in batch)


def test_karras_sigmas_endpoints_monotone_length():
    sigmas = karras_sigmas(18)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (18,)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-12) and sigmas[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert (sigmas[1:] < sigmas[:-1]).all() and (sigmas > 0).all()  # descending, no trailing zero
    linear = karras_sigmas(5, sigma_min=1.0, sigma_max=9.0, rho=1.0)
    torch.testing.assert_close(linear, torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        karras_sigmas(1)


@pytest.mark.parametrize("run", range(len(REF["runs"])), ids=["deterministic", "imagenet-churn", "clamped-churn"])
def test_sampler_matches_edm_generate_py(run):
    run = REF["runs"][run]
    net = GaussianDenoiser(REF["mu"], REF["s"], *run["net_range"])
    noise = list(run["noise"].double())  # the noise EDM's sampler drew, one tensor per step
    out = edm_sampler(net, REF["latents"], REF["labels"], randn_like=lambda x: noise.pop(0), **run["kwargs"])
    assert out.dtype == torch.float64 and not noise  # EDM draws noise on every step, even at gamma = 0
    torch.testing.assert_close(out, run["out"], atol=1e-10, rtol=0)


def test_sampler_clamps_to_the_net_sigma_range_and_uses_2n_minus_1_evaluations():
    calls = []

    class Recording(GaussianDenoiser):
        def forward(self, x, sigma, class_labels=None):
            calls.append(float(sigma))
            return super().forward(x, sigma, class_labels)

    net = Recording(MU, S, sigma_min=0.01, sigma_max=40.0)
    edm_sampler(net, torch.randn(2, 3, 2, 2), torch.zeros(2, dtype=torch.long), num_steps=6)
    assert len(calls) == 2 * 6 - 1
    assert calls[0] == pytest.approx(40.0) and min(calls) == pytest.approx(0.01)
    assert sorted(set(calls), reverse=True) == pytest.approx(karras_sigmas(6, 0.01, 40.0).tolist())


def exact_start(n: int, sigma_max: float = 80.0) -> torch.Tensor:
    """Latents whose x = latents * sigma_max follows the true marginal N(mu, s^2 + sigma_max^2)."""
    z = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (MU[0, :, None, None] + (S[:, None, None] ** 2 + sigma_max**2).sqrt() * z) / sigma_max


def test_deterministic_sampler_follows_the_gaussian_ode_at_second_order():
    # For Gaussian data the probability-flow ODE is x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + T^2).
    latents, labels = exact_start(64), torch.zeros(64, dtype=torch.long)
    m, s = MU[0, :, None, None], S[:, None, None]
    exact = m + (80 * latents - m) * s / (s**2 + 80**2).sqrt()
    net = GaussianDenoiser(MU, S)
    errors = [(edm_sampler(net, latents, labels, num_steps=n) - exact).abs().max().item() for n in (40, 80)]
    assert errors[1] < 0.02 and 3.5 < errors[0] / errors[1] < 4.5  # Heun: halving the step quarters the error


@pytest.mark.parametrize("kwargs", [dict(num_steps=64), dict(num_steps=256, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)],
                         ids=["deterministic", "imagenet-churn"])
def test_sampler_lands_on_the_gaussian_data_mean_and_std(kwargs):
    n = 1000  # 16,000 values per channel
    torch.manual_seed(0)
    out = edm_sampler(GaussianDenoiser(MU, S), exact_start(n), torch.zeros(n, dtype=torch.long), **kwargs)
    mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3))
    assert ((mean - MU[0]).abs() < 5 * S / math.sqrt(16 * n) + 0.003).all(), mean
    assert ((std / S - 1).abs() < 0.02).all(), std


def test_loss_matches_edm_edmloss():
    ref = REF["loss"]
    torch.manual_seed(ref["seed"])
    loss = edm_loss(GaussianDenoiser(REF["mu"], REF["s"]), ref["images"], REF["labels"])
    assert loss.shape == ref["images"].shape and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref["out"], atol=0, rtol=1e-6)
