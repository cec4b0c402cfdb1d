"""The training objectives and the EMA against their formulas: each would fail if a term or weight were wrong."""

from copy import deepcopy

import pytest
import torch
from torch import nn

from loss.denoising import InterpolantObjective, projection_loss
from models import create_model
from training.ema import update_ema


def test_update_ema_follows_its_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.normal_()
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, decay=0.9)
    after, current = ema.state_dict(), model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * current[name])  # ema <- d ema + (1-d) model
    assert after["1.num_batches_tracked"] == 7  # integer buffers are copied
    update_ema(ema, model, decay=0.0)
    for name, value in current.items():
        torch.testing.assert_close(ema.state_dict()[name], value)


def test_projection_loss_is_the_negative_cosine_similarity():
    z = torch.randn(2, 5, 8)
    orthogonal = torch.zeros(2, 5, 8)
    orthogonal[..., 0], z_axis = 1.0, torch.zeros(2, 5, 8)
    z_axis[..., 1] = 3.0
    assert projection_loss([z], [z]).item() == pytest.approx(-1.0)
    assert projection_loss([z], [-2.5 * z]).item() == pytest.approx(1.0)  # any scale: only the direction counts
    assert projection_loss([orthogonal], [z_axis]).item() == pytest.approx(0.0, abs=1e-7)
    # The mean over encoders: one aligned (-1) and one opposed (+1) encoder cancel.
    assert projection_loss([z, z], [z, -z]).item() == pytest.approx(0.0, abs=1e-6)


def flat_grad(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def test_total_loss_is_the_weighted_sum_and_every_term_reaches_the_gradient():
    torch.manual_seed(0)
    model = create_model("SiT-Ti/4", input_size=16, num_classes=10, in_channels=3, z_dims=[32], cls_token_dim=32)
    with torch.no_grad():  # off adaLN-Zero's zeros, so that every output depends on every block
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = InterpolantObjective(proj_coeff=0.5, cls_coeff=0.03)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    # REG aligns the class token too: 16 patch tokens + 1
    losses = objective(model, x, y, zs=[torch.randn(4, 17, 32)], cls_token=torch.randn(4, 32))
    torch.testing.assert_close(losses["loss"], losses["denoise"] + 0.5 * losses["proj"] + 0.03 * losses["cls"])
    params = [p for p in model.parameters() if p.requires_grad]
    total, denoise, proj, cls = (flat_grad(losses[k], params) for k in ("loss", "denoise", "proj", "cls"))
    assert proj.norm() > 0 and cls.norm() > 0
    torch.testing.assert_close(total, denoise + 0.5 * proj + 0.03 * cls, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_regs_class_token_is_noised_on_the_latents_path_at_their_time_and_regressed_to_its_velocity(path):
    """REG eq. 7: the token enters as ``alpha_t cls + sigma_t n`` (the latents' t, its own noise n) and its
    loss is ``|v_cls - (d_alpha_t cls + d_sigma_t n)|^2``; a model answering zeros makes that the target's norm."""
    from diffusion.transport import interpolant

    seen = {}

    def model(x_t, t, y, cls_token=None):
        seen["x_t"], seen["cls"] = x_t, cls_token
        return torch.zeros_like(x_t), [], torch.zeros_like(cls_token)

    torch.manual_seed(0)
    x, noise, cls = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 5)
    t = torch.tensor([0.2, 0.5, 0.9]).view(-1, 1, 1, 1)
    losses = InterpolantObjective(path_type=path, proj_coeff=0.0, cls_coeff=1.0)(
        model, x, torch.zeros(3, dtype=torch.long), cls_token=cls, t=t, noise=noise)
    alpha, sigma, d_alpha, d_sigma = (torch.as_tensor(c).reshape(-1, 1) for c in interpolant(t.flatten(), path))
    torch.testing.assert_close(seen["x_t"], alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * noise)
    n = (seen["cls"] - alpha * cls) / sigma  # the token's own noise, read back from what the model saw
    assert (n - noise.flatten(1)[:, :5]).abs().max() > 0.1  # not the latents' noise
    torch.testing.assert_close(losses["cls"], (d_alpha * cls + d_sigma * n).pow(2).mean())
    torch.testing.assert_close(losses["denoise"], (d_alpha.view(-1, 1, 1, 1) * x + d_sigma.view(-1, 1, 1, 1) * noise)
                               .pow(2).mean())
