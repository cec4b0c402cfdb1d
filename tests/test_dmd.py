"""DMD2's losses and teacher adapters against closed forms (``loss/dmd.py``, ``methods/dmd2_teacher.py``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from exact_denoisers import NUM_CLASSES, ExactDiT, ExactSiT, posterior_mean

from diffusion.denoiser import noised
from loss.dmd import (
    denoising_step_list,
    distribution_matching_loss,
    fake_score_loss,
    gan_discriminator_loss,
    gan_generator_loss,
)
from methods.dmd2_teacher import GRID, DDPMTeacher, FlowTeacher


def gaussian_x0(x_e: torch.Tensor, sigma: float, mean: float, std: float) -> torch.Tensor:
    """E[x0 | x0 + sigma eps = x_e] for data N(mean, std^2) (per element)."""
    return (std**2 * x_e + sigma**2 * mean) / (std**2 + sigma**2)


def test_dm_gradient_is_the_normalised_score_difference():
    """d loss / d x = (p_real - p_fake) / mean|p_real| / numel, with p = x - x0 (DMD eq. 7)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    sigma = 2.0
    x_e = x.detach() + sigma * torch.randn_like(x)
    x0_real, x0_fake = gaussian_x0(x_e, sigma, 1.0, 0.5), gaussian_x0(x_e, sigma, -1.0, 0.5)
    distribution_matching_loss(x, x0_real, x0_fake).backward()
    p_real, p_fake = x.detach() - x0_real, x.detach() - x0_fake
    expected = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True) / x.numel()
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)
    # the closed form of the difference: x0_fake - x0_real = sigma^2 (mu_fake - mu_real) / (s^2 + sigma^2)
    torch.testing.assert_close(p_real - p_fake, torch.full_like(x, sigma**2 * -2.0 / (0.25 + sigma**2)))


def test_dm_loss_moves_the_generator_to_the_teacher_distribution():
    """A generator x = z + theta (data N(theta, 1)) against a Gaussian teacher N(3, 1), its fake score the
    exact denoiser of the generator's own distribution: DM gradient descent brings theta to 3."""
    torch.manual_seed(0)
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=0.5)
    for _ in range(200):
        x = torch.randn(256, 1, 2, 2, dtype=torch.float64) + theta
        sigma = math.exp(torch.empty(()).uniform_(-2, 2).item())
        x_e = x.detach() + sigma * torch.randn_like(x)
        loss = distribution_matching_loss(x, gaussian_x0(x_e, sigma, 3.0, 1.0),
                                          gaussian_x0(x_e, sigma, theta.item(), 1.0))
        opt.zero_grad()
        (loss * x.numel() / x.shape[0]).backward()
        opt.step()
    assert abs(theta.item() - 3.0) < 0.1


def test_dm_loss_is_finite_when_real_and_x_agree():
    """nan_to_num: a sample whose estimates both equal it (0 / 0) contributes no gradient instead of NaN."""
    x = torch.zeros(2, 1, 2, 2, requires_grad=True)
    x0_fake = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    x0_fake[1] = 1.0
    x0_real = x0_fake.clone()
    x0_real[1] = 2.0
    loss = distribution_matching_loss(x, x0_real, x0_fake)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (x.grad[0] == 0).all() and (x.grad[1] < 0).all()  # descent moves x toward x0_real


def test_fake_score_loss_is_edm_weighted():
    x0, pred = torch.zeros(3, 1, 1, 1), torch.ones(3, 1, 1, 1)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    expected = torch.mean(sigma**-2 + 1 / 0.25)
    torch.testing.assert_close(fake_score_loss(pred, x0, sigma), expected)


def test_gan_losses_closed_forms():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    torch.testing.assert_close(gan_generator_loss(fake), F.softplus(-fake).mean())
    torch.testing.assert_close(gan_discriminator_loss(real, fake), F.softplus(fake).mean() + F.softplus(-real).mean())


def test_gan_head_learns_to_tell_real_from_fake_and_generator_loss_fools_it():
    """A tiny head and a tiny 'generator' (a learnable offset): the discriminator loss falls below log 4,
    then the generator loss moves the fake toward the real features' pattern."""
    from models.discriminator import dmd2_classifier_head

    torch.manual_seed(0)
    head = dmd2_classifier_head(32, 8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    pattern = 2 * torch.randn(1, 32, 8, 8)
    real = torch.randn(16, 32, 8, 8) + pattern
    offset = torch.zeros(1, 32, 8, 8, requires_grad=True)
    for _ in range(60):
        loss = gan_discriminator_loss(head(real), head(torch.randn(16, 32, 8, 8) + offset.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * math.log(4)
    noise = torch.randn(16, 32, 8, 8)
    before = gan_generator_loss(head(noise + offset)).item()
    gen_opt = torch.optim.Adam([offset], lr=0.05)
    for _ in range(30):
        gen_opt.zero_grad()
        gan_generator_loss(head(torch.randn(16, 32, 8, 8) + offset)).backward()
        gen_opt.step()
    assert gan_generator_loss(head(noise + offset)).item() < 0.5 * before
    assert F.cosine_similarity(offset.flatten(), pattern.flatten(), dim=0) > 0.1


def test_denoising_step_list():
    assert denoising_step_list(4) == [999, 749, 499, 249]
    assert denoising_step_list(1) == [999]
    assert denoising_step_list(2, 1000) == [999, 499]
    with pytest.raises(ValueError, match="num_denoising_step"):
        denoising_step_list(0)
    # beyond the teacher's grid every step would clamp to its top level; as many steps as levels leaves one out
    with pytest.raises(ValueError, match="denoising_timestep <= 1000"):
        denoising_step_list(4, 5000)
    with pytest.raises(ValueError, match="num_denoising_step < denoising_timestep"):
        denoising_step_list(4, 4)
    assert denoising_step_list(4, 5) == [4, 3, 2, 1]


@pytest.mark.parametrize("family", ["ddpm", "flow-linear", "flow-cosine"])
def test_teacher_x0_is_the_posterior_mean_with_guidance(family):
    """Every adapter reads its model as E[x0 | x] at the grid's noise levels, guided as x0_u + s (x0_c - x0_u)."""
    from diffusion.pipeline import base_alphas_cumprod

    if family == "ddpm":
        teacher = DDPMTeacher(ExactDiT(0.0), base_alphas_cumprod(), null=NUM_CLASSES)
    else:
        teacher = FlowTeacher(ExactSiT(family.split("-")[1]), family.split("-")[1], None, null=NUM_CLASSES)
    torch.manual_seed(0)
    index = torch.tensor([20, 300, 700, 980])
    sigma = teacher.sigma(index)
    y = torch.tensor([1, 2, 3, 4])
    x0 = posterior_mean(torch.zeros(4, 3, 8, 8), torch.ones(4), torch.ones(4), y)  # a class's image mean
    x_vp = noised(x0.float(), sigma, torch.randn(4, 3, 8, 8))
    alpha, s = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
    cond = posterior_mean(x_vp, alpha, s, y)
    uncond = posterior_mean(x_vp, alpha, s, torch.full_like(y, NUM_CLASSES))
    torch.testing.assert_close(teacher.x0(teacher.model, x_vp, sigma, y), cond, rtol=1e-4, atol=1e-4)
    guided = teacher.x0(teacher.model, x_vp, sigma, y, cfg_scale=3.0)
    assert guided.dtype == torch.float64
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)


def test_teacher_grids_span_the_teachers_own_range():
    from diffusion.denoiser import ddpm_sigmas
    from diffusion.pipeline import base_alphas_cumprod

    ddpm = DDPMTeacher(ExactDiT(0.0), base_alphas_cumprod())
    assert len(ddpm.sigmas) == GRID and torch.equal(ddpm.sigmas, ddpm_sigmas(base_alphas_cumprod()))
    flow = FlowTeacher(ExactSiT("linear"), "linear", None)
    assert flow.sigmas[0] == 0 and math.isinf(flow.sigmas[-1])  # t = 0 .. 1: index 999 is pure noise
    torch.testing.assert_close(flow.sigmas[500], torch.tensor(500 / 999 / (1 - 500 / 999), dtype=torch.float64))


def test_noised_is_the_variance_preserving_marginal():
    x0, eps = torch.ones(3, 1, 1, 1), torch.full((3, 1, 1, 1), 2.0)
    sigma = torch.tensor([0.0, 1.0, math.inf])
    out = noised(x0, sigma, eps).flatten()
    torch.testing.assert_close(out, torch.tensor([1.0, 3 / math.sqrt(2), 2.0]))


def test_dmd2_report_puts_teacher_and_generators_side_by_side(tmp_path):
    """evaluations/dmd2_report.py (make demo-dmd2's last step): each run's metrics as a fraction of the first
    run's accuracy, and a grid with the first samples of every class of every run, rows named by class."""
    import json

    import numpy as np

    from evaluations.dmd2_report import main, parse_args

    specs = []
    for name, acc, fd in (("teacher", 0.5, 50.0), ("one-step", 0.4, 150.0)):
        npz = tmp_path / f"{name}.npz"
        np.savez(npz, arr_0=np.zeros((20, 8, 8, 3), dtype=np.uint8), arr_1=np.arange(20) % 10)
        npz.with_suffix(".json").write_text(json.dumps({"proxy_class_accuracy": acc, "proxy_fd": fd}))
        specs += ["--run", f"{name}={npz}"]
    main(parse_args([*specs, "--dataset", "builtin", "--out", str(tmp_path / "out")]))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| teacher | 20 | 0.500 | 100% | 50.0 |" in report and "| one-step | 20 | 0.400 | 80% | 150.0 |" in report
    assert (tmp_path / "out" / "samples.png").is_file()
    with pytest.raises(ValueError, match="generate.py --proxy writes both"):
        main(parse_args(["--run", f"missing={tmp_path / 'nope.npz'}", "--out", str(tmp_path / "out")]))
