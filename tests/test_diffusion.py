"""Closed-form and behavioural tests of diffusion/ (schedules, q, posterior, losses, samplers,
respacing). Reference values are computed here with numpy from the papers' formulas; parity
with the original DiT code is in test_diffusion_parity.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion import create_diffusion, space_timesteps
from diffusion import gaussian_diffusion as gd
from diffusion.diffusion_utils import discretized_gaussian_log_likelihood, normal_kl
from diffusion.respace import SpacedDiffusion


def make(T=50, var=gd.ModelVarType.LEARNED_RANGE, mean=gd.ModelMeanType.EPSILON, loss=gd.LossType.MSE):
    return gd.GaussianDiffusion(
        betas=gd.get_named_beta_schedule("linear", T),
        model_mean_type=mean,
        model_var_type=var,
        loss_type=loss,
    )


def const_model(value):
    return lambda x, t, **kw: value.expand(x.shape[0], *value.shape[1:])


# ---- schedules ---------------------------------------------------------------------------


def test_linear_schedule_endpoints_scale_with_step_count():
    betas = gd.get_named_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), np.diff(betas)[0])
    short = gd.get_named_beta_schedule("linear", 250)  # 1000 / T scaling
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)


def test_cosine_schedule_reproduces_its_alpha_bar():
    T = 100
    betas = gd.get_named_beta_schedule("squaredcos_cap_v2", T)
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f(np.arange(1, T + 1) / T) / f(0.0)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-10)
    assert betas[-1] == 0.999  # alpha_bar(1) = 0 is capped


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'cosine'.*squaredcos_cap_v2"):
        create_diffusion("", noise_schedule="cosine")


# ---- forward process and posterior -------------------------------------------------------


def test_posterior_is_the_bayes_posterior_of_the_forward_process():
    diffusion = make(T=50)
    betas = gd.get_named_beta_schedule("linear", 50)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    # completing the square in q(x_t | x_{t-1}) q(x_{t-1} | x_0)
    precision = 1 / (1 - abar_prev[1:]) + (1 - betas[1:]) / betas[1:]
    var = 1 / precision
    np.testing.assert_allclose(diffusion.posterior_variance[1:], var, rtol=1e-10)
    np.testing.assert_allclose(
        diffusion.posterior_mean_coef1[1:], var * np.sqrt(abar_prev[1:]) / (1 - abar_prev[1:]), rtol=1e-10
    )
    np.testing.assert_allclose(
        diffusion.posterior_mean_coef2[1:], var * np.sqrt(1 - betas[1:]) / betas[1:], rtol=1e-10
    )
    assert diffusion.posterior_variance[0] == 0
    np.testing.assert_allclose(
        diffusion.posterior_log_variance_clipped, np.log(np.append(var[0], var)), rtol=1e-12
    )  # beta_tilde_1 at t=0

    x0, xt = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 7, 49])
    mean, variance, _ = diffusion.q_posterior_mean_variance(x0, xt, t)
    c1, c2 = (
        torch.tensor(a[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
        for a in (diffusion.posterior_mean_coef1, diffusion.posterior_mean_coef2)
    )
    torch.testing.assert_close(mean, c1 * x0 + c2 * xt)
    assert variance.shape == x0.shape


def test_q_sample_has_the_closed_form_mean_and_std():
    diffusion = make(T=50)
    abar = np.cumprod(1 - gd.get_named_beta_schedule("linear", 50))
    t = torch.tensor([0, 25, 49])
    x0 = torch.full((3, 1, 200, 200), 0.7)
    torch.manual_seed(0)
    xt = diffusion.q_sample(x0, t)
    mean, variance, log_variance = diffusion.q_mean_variance(x0, t)
    for i, step in enumerate(t.tolist()):
        assert xt[i].mean().item() == pytest.approx(0.7 * math.sqrt(abar[step]), abs=0.025)  # 5 sigma
        assert xt[i].std().item() == pytest.approx(math.sqrt(1 - abar[step]), rel=0.03)
        assert mean[i, 0, 0, 0].item() == pytest.approx(0.7 * math.sqrt(abar[step]), rel=1e-6)
        assert variance[i, 0, 0, 0].item() == pytest.approx(1 - abar[step], rel=1e-6)
        assert log_variance[i, 0, 0, 0].item() == pytest.approx(math.log(1 - abar[step]), rel=1e-6)
    noise = torch.randn_like(x0)
    expected = (
        torch.tensor(np.sqrt(abar[t]), dtype=torch.float32).view(-1, 1, 1, 1) * x0
        + torch.tensor(np.sqrt(1 - abar[t]), dtype=torch.float32).view(-1, 1, 1, 1) * noise
    )
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise=noise), expected)


# ---- likelihood pieces -------------------------------------------------------------------


def test_normal_kl_closed_form():
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-7)
    # KL(N(1, 1) || N(0, 4)) = ln 2 + (1 + 1) / 8 - 1/2
    kl = normal_kl(torch.tensor(1.0), 0.0, 0.0, math.log(4.0))
    assert kl.item() == pytest.approx(math.log(2) - 0.25, rel=1e-6)


def test_discretized_gaussian_bins_sum_to_one():
    x = torch.linspace(-1, 1, 256)  # the 8-bit grid; each bin is x +- 1/255, the edges open
    for mean, std in [(0.1, 0.05), (-0.9, 0.3), (0.0, 2.0)]:
        logp = discretized_gaussian_log_likelihood(
            x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, math.log(std))
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


# ---- reverse process ---------------------------------------------------------------------


def test_learned_range_interpolates_log_variance_between_posterior_and_beta():
    diffusion = make(T=50)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0, 10, 49])
    log_small = np.log(np.append(diffusion.posterior_variance[1], diffusion.posterior_variance[1:]))[t]
    log_large = np.log(diffusion.betas)[t]
    for v, frac in [(-1.0, 0.0), (1.0, 1.0), (0.0, 0.5), (0.5, 0.75)]:
        out = torch.cat([torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), v)], dim=1)
        lv = diffusion.p_mean_variance(const_model(out), x, t)["log_variance"][:, 0, 0, 0]
        expected = frac * log_large + (1 - frac) * log_small
        torch.testing.assert_close(lv, torch.tensor(expected, dtype=torch.float32))


def test_learned_variance_is_the_log_variance_output():
    diffusion = make(T=50, var=gd.ModelVarType.LEARNED)
    out = torch.cat([torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), -3.0)], dim=1)
    res = diffusion.p_mean_variance(const_model(out), torch.randn(2, 2, 4, 4), torch.tensor([3, 30]))
    assert torch.allclose(res["log_variance"], torch.tensor(-3.0))
    assert torch.allclose(res["variance"], torch.tensor(math.exp(-3.0)))


def test_previous_x_model_recovers_x_start_from_the_posterior_mean():
    diffusion = make(T=50, var=gd.ModelVarType.FIXED_SMALL, mean=gd.ModelMeanType.PREVIOUS_X)
    x0, t = torch.rand(2, 2, 4, 4) * 2 - 1, torch.tensor([4, 40])
    xt = diffusion.q_sample(x0, t)
    mu = diffusion.q_posterior_mean_variance(x0, xt, t)[0]
    out = diffusion.p_mean_variance(lambda x, t: mu, xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0, atol=1e-4, rtol=1e-4)
    assert torch.equal(out["mean"], mu)


def test_vb_term_trains_only_the_variance_channels():
    """The hybrid loss detaches the mean in the VB term: vb has no gradient w.r.t. eps."""
    diffusion = create_diffusion("")
    raw = torch.randn(4, 8, 4, 4, requires_grad=True)
    out = raw * 1.0
    terms = diffusion.training_losses(
        lambda x, t: out, torch.rand(4, 4, 4, 4) * 2 - 1, torch.tensor([0, 3, 400, 999])
    )
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), raw, retain_graph=True)
    assert torch.all(grad_vb[:, :4] == 0) and grad_vb[:, 4:].abs().sum() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), raw)
    assert torch.all(grad_mse[:, 4:] == 0) and grad_mse[:, :4].abs().sum() > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_rescaled_mse_scales_vb_by_steps_over_1000():
    x0, t, noise = torch.rand(2, 4, 4, 4) * 2 - 1, torch.tensor([1, 200]), torch.randn(2, 4, 4, 4)
    out = torch.randn(2, 8, 4, 4)
    plain = create_diffusion("250").training_losses(lambda x, t: out, x0, t, noise=noise)
    scaled = create_diffusion("250", rescale_learned_sigmas=True).training_losses(
        lambda x, t: out, x0, t, noise=noise
    )
    torch.testing.assert_close(scaled["vb"], plain["vb"] * 0.25)
    torch.testing.assert_close(scaled["mse"], plain["mse"])


def test_p_sample_adds_no_noise_at_t0():
    diffusion = create_diffusion("10")
    x, t0 = torch.randn(2, 4, 4, 4), torch.zeros(2, dtype=torch.long)
    model = const_model(torch.randn(1, 8, 4, 4))
    mean = diffusion.p_mean_variance(model, x, t0)["mean"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.equal(diffusion.p_sample(model, x, t0)["sample"], mean)
    torch.manual_seed(0)
    assert not torch.allclose(diffusion.p_sample(model, x, torch.tensor([5, 5]))["sample"], mean)


def test_ddim_eta0_is_deterministic_and_eta1_is_ddpm_with_posterior_variance():
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([3, 7])
    model = const_model(torch.randn(1, 4, 4, 4))
    fixed_small = create_diffusion("ddim10", learn_sigma=False, sigma_small=True)
    samples = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        samples.append(fixed_small.ddim_sample(model, x, t, eta=0.0)["sample"])
    assert torch.equal(*samples)
    # Song et al. 2021 sec 4.1: eta = 1 gives sigma_t^2 = beta_tilde_t, i.e. DDPM with FIXED_SMALL
    torch.manual_seed(3)
    ddim = fixed_small.ddim_sample(model, x, t, clip_denoised=False, eta=1.0)["sample"]
    torch.manual_seed(3)
    ddpm = fixed_small.p_sample(model, x, t, clip_denoised=False)["sample"]
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)


def test_sample_loop_shows_tqdm_progress(capsys):
    diffusion = create_diffusion("5")
    diffusion.p_sample_loop(const_model(torch.zeros(1, 8, 2, 2)), (1, 4, 2, 2), device="cpu", progress=True)
    assert "5/5" in capsys.readouterr().err


# ---- respacing ---------------------------------------------------------------------------


def test_space_timesteps_strings():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and 0 in steps and 999 in steps
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(300, "10,15,20") == space_timesteps(300, [10, 15, 20])
    assert sorted(space_timesteps(300, "2,3,1")) == [0, 99, 100, 150, 199, 200]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ddim45", "exactly 45 DDIM steps.*ddim44, ddim46"),
        ("2000", "cannot take 2000 steps from 1000"),
        ("0", "between 1 and 1000"),
        ("ddim", "bad timestep respacing"),
        ("25o", "bad timestep respacing"),
        ("1", "keeps 1 step"),
    ],
)
def test_bad_respacing_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        create_diffusion(spec)


def test_respaced_diffusion_keeps_alpha_bar_at_kept_steps():
    base_abar = np.cumprod(1 - gd.get_named_beta_schedule("linear", 1000))
    for spec in ("250", "ddim50", "10,20"):
        diffusion = create_diffusion(spec)
        np.testing.assert_allclose(diffusion.alphas_cumprod, base_abar[diffusion.timestep_map], rtol=1e-12)
        assert diffusion.num_timesteps == len(space_timesteps(1000, spec))


def test_spaced_model_receives_original_timesteps():
    seen = []

    def model(x, t, y=None):
        seen.append(t.tolist())
        return torch.zeros(x.shape[0], 8, *x.shape[2:])

    diffusion = create_diffusion("ddim10")
    diffusion.ddim_sample_loop(model, (2, 4, 2, 2), device="cpu")
    assert seen == [[s, s] for s in range(900, -1, -100)]
    seen.clear()
    diffusion.training_losses(model, torch.zeros(3, 4, 2, 2), torch.tensor([0, 5, 9]))
    assert seen == [[0, 500, 900]]


def test_create_diffusion_maps_flags_like_dit():
    default = create_diffusion(None)
    assert isinstance(default, SpacedDiffusion) and default.num_timesteps == 1000
    assert (default.model_mean_type, default.model_var_type, default.loss_type) == (
        gd.ModelMeanType.EPSILON,
        gd.ModelVarType.LEARNED_RANGE,
        gd.LossType.MSE,
    )
    assert create_diffusion("", use_kl=True).loss_type == gd.LossType.RESCALED_KL
    assert create_diffusion("", rescale_learned_sigmas=True).loss_type == gd.LossType.RESCALED_MSE
    assert create_diffusion("", learn_sigma=False).model_var_type == gd.ModelVarType.FIXED_LARGE
    assert (
        create_diffusion("", learn_sigma=False, sigma_small=True).model_var_type
        == gd.ModelVarType.FIXED_SMALL
    )
    assert create_diffusion("", predict_xstart=True).model_mean_type == gd.ModelMeanType.START_X
    assert create_diffusion("", diffusion_steps=100).num_timesteps == 100
