"""Closed-form tests of diffusion/transport.py: REPA's interpolants (t=0 data, t=1 noise), conversions
of a velocity prediction, the SDE coefficients of the samplers and the training-time distributions."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.transport import (
    diffusion_coefficient,
    eps_from_velocity,
    interpolant,
    interpolate,
    sample_time,
    score_from_velocity,
    sde_drift,
    target_velocity,
    x0_from_velocity,
)

T = torch.linspace(0, 1, 11, dtype=torch.float64)


def closed_form(t: float, path_type: str) -> tuple[float, float, float, float]:
    if path_type == "linear":
        return 1 - t, t, -1.0, 1.0
    a = math.pi * t / 2
    return math.cos(a), math.sin(a), -math.pi / 2 * math.sin(a), math.pi / 2 * math.cos(a)


def batch(t_values, path_type, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(t_values, dtype=torch.float64)
    x = torch.randn(len(t_values), 4, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, eps, t, interpolate(x, eps, t, path_type), target_velocity(x, eps, t, path_type)


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_coefficients_match_closed_forms(path_type):
    coefficients = interpolant(T, path_type)
    for j, t in enumerate(T.tolist()):
        expected = closed_form(t, path_type)
        for value, exp in zip(coefficients, expected):
            value = value[j].item() if torch.is_tensor(value) else value
            assert value == pytest.approx(exp, abs=1e-15)


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_derivatives_match_finite_differences(path_type):
    t, h = torch.linspace(0.01, 0.99, 25, dtype=torch.float64), 1e-6
    alpha_p, sigma_p, _, _ = interpolant(t + h, path_type)
    alpha_m, sigma_m, _, _ = interpolant(t - h, path_type)
    _, _, d_alpha_t, d_sigma_t = interpolant(t, path_type)
    torch.testing.assert_close(
        (alpha_p - alpha_m) / (2 * h), d_alpha_t * torch.ones_like(t), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(
        (sigma_p - sigma_m) / (2 * h), d_sigma_t * torch.ones_like(t), atol=1e-8, rtol=0
    )


def test_cosine_path_preserves_variance_and_linear_path_ends_on_data_and_noise():
    alpha_t, sigma_t, _, _ = interpolant(T, "cosine")
    torch.testing.assert_close(alpha_t**2 + sigma_t**2, torch.ones_like(T))
    x, eps, _, _, _ = batch([0.0, 1.0], "linear")
    x_t = interpolate(x, eps, torch.tensor([0.0, 1.0], dtype=torch.float64), "linear")
    assert torch.equal(x_t[0], x[0]) and torch.equal(x_t[1], eps[1])


def test_broadcasting_like_repa_loss():
    # REPA's SILoss draws t of shape (N, 1, 1, 1); linear derivatives are plain numbers
    t = torch.rand(3, 1, 1, 1)
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = interpolant(t, "linear")
    assert alpha_t.shape == sigma_t.shape == (3, 1, 1, 1) and (d_alpha_t, d_sigma_t) == (-1.0, 1.0)
    x, eps, t, x_t, v = batch([0.2, 0.5, 0.9], "cosine")
    assert torch.equal(interpolate(x, eps, t[:, None, None, None], "cosine"), x_t)
    assert torch.equal(target_velocity(x, eps, t[:, None, None, None], "cosine"), v)


def test_linear_target_velocity_is_noise_minus_data():
    x, eps, _, _, v = batch([0.1, 0.7], "linear")
    torch.testing.assert_close(v, eps - x, atol=0, rtol=0)


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_velocity_to_eps_x0_score_round_trip(path_type):
    x, eps, t, x_t, v = batch([0.0, 0.3, 0.8, 1.0], path_type)
    torch.testing.assert_close(eps_from_velocity(v, x_t, t, path_type), eps)
    torch.testing.assert_close(x0_from_velocity(v, x_t, t, path_type), x)
    _, sigma_t, _, _ = interpolant(t[1:, None, None, None], path_type)
    torch.testing.assert_close(score_from_velocity(v, x_t, t, path_type)[1:], -eps[1:] / sigma_t)


def test_velocity_conversions_closed_forms():
    _, _, t, x_t, v = batch([0.05, 0.5, 1.0], "linear")
    t4 = t[:, None, None, None]
    torch.testing.assert_close(eps_from_velocity(v, x_t, t), x_t + (1 - t4) * v)
    torch.testing.assert_close(x0_from_velocity(v, x_t, t), x_t - t4 * v)
    torch.testing.assert_close(score_from_velocity(v, x_t, t), -(x_t + (1 - t4) * v) / t4)
    # cosine: sigma^2 - (alpha / d_alpha) d_sigma sigma = 1 in REPA's formula, so score = (alpha / d_alpha) v - x_t
    _, _, t, x_t, v = batch([0.05, 0.5, 1.0], "cosine")
    a = math.pi / 2 * t[:, None, None, None]
    torch.testing.assert_close(
        score_from_velocity(v, x_t, t, "cosine"), -v / (math.pi / 2 * torch.tan(a)) - x_t
    )


def test_score_is_singular_only_at_data_end():
    for path_type in ("linear", "cosine"):
        _, _, t, x_t, v = batch([0.0, 1.0], path_type)
        assert torch.isfinite(eps_from_velocity(v, x_t, t, path_type)).all()
        assert torch.isfinite(x0_from_velocity(v, x_t, t, path_type)).all()
        score = score_from_velocity(v, x_t, t, path_type)
        assert not torch.isfinite(score[0]).all() and torch.isfinite(score[1]).all()


def test_sde_coefficients_of_the_samplers():
    # w_t = 2t (REPA code; github.com/sihyun-yu/REPA issue #52): 1/2 w_t = sigma_t on the linear path
    torch.testing.assert_close(0.5 * diffusion_coefficient(T), interpolant(T, "linear")[1])
    x, eps, t, x_t, v = batch([0.04, 0.5, 1.0], "linear")
    torch.testing.assert_close(sde_drift(v, x_t, t, "linear"), v + eps)  # v - t * (-eps / t)
    x, eps, t, x_t, v = batch([0.04, 0.5, 1.0], "cosine")
    sigma_t = torch.sin(math.pi / 2 * t)[:, None, None, None]
    torch.testing.assert_close(sde_drift(v, x_t, t, "cosine"), v + t[:, None, None, None] * eps / sigma_t)


def test_sample_time_draws_like_repa():
    n = 5
    torch.manual_seed(3)
    expected = torch.rand((n, 1, 1, 1))
    torch.manual_seed(3)
    assert torch.equal(sample_time(n, "uniform"), expected)
    z = torch.randn((n, 1, 1, 1), generator=torch.Generator().manual_seed(4))
    lin = sample_time(n, "lognormal", "linear", generator=torch.Generator().manual_seed(4))
    cos = sample_time(n, "lognormal", "cosine", generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(lin, torch.sigmoid(z))  # sigma / (1 + sigma), sigma = e^z
    torch.testing.assert_close(cos, 2 / math.pi * torch.atan(z.exp()))
    assert lin.shape == cos.shape == (n, 1, 1, 1)


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_lognormal_time_has_median_one_half(path_type):
    t = sample_time(20000, "lognormal", path_type, generator=torch.Generator().manual_seed(0)).flatten()
    assert t.median().item() == pytest.approx(0.5, abs=0.015)
    assert 0 < t.min() and t.max() < 1
    if path_type == "linear":  # P(t < 1/4) = P(z < log(1/3)) = Phi(log(1/3))
        phi = 0.5 * (1 + math.erf(math.log(1 / 3) / math.sqrt(2)))
        assert (t < 0.25).double().mean().item() == pytest.approx(phi, abs=0.01)


def test_unknown_path_or_weighting_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown path_type 'edm'; use one of linear, cosine"):
        interpolant(T, "edm")
    with pytest.raises(ValueError, match="unknown path_type"):
        sample_time(2, "uniform", "vp")
    with pytest.raises(ValueError, match="unknown weighting 'logit'; use one of uniform, lognormal"):
        sample_time(2, "logit")
