"""REPA-E's latent BatchNorm inside the SiT and the objective's REPA-E arguments (t, noise, align_only)."""

from __future__ import annotations

import copy

import pytest
import torch

from loss.denoising import InterpolantObjective, projection_loss
from models import create_model
from training.ema import update_ema


def repae_sit(**kw):
    torch.manual_seed(0)
    return create_model("SiT-Ti/4", input_size=8, in_channels=4, num_classes=5, z_dims=[16], encoder_depth=1,
                        bn_momentum=0.1, **kw)


def batch(n=4):
    gen = torch.Generator().manual_seed(1)
    x = 3 + 2 * torch.randn(n, 4, 8, 8, generator=gen)
    return x, torch.arange(n) % 5, [torch.randn(n, 4, 16, generator=gen)]


def test_batchnorm_has_repae_names_and_settings_and_is_absent_without_momentum():
    model = repae_sit()
    assert {k for k in model.state_dict() if k.startswith("bn.")} == {
        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}  # affine=False: no weight or bias
    assert model.bn.eps == 1e-4 and model.bn.momentum == 0.1
    plain = create_model("SiT-Ti/4", input_size=8, in_channels=4, num_classes=5, z_dims=[16], encoder_depth=1)
    assert not hasattr(plain, "bn") and not any(k.startswith("bn.") for k in plain.state_dict())


def test_latent_statistics_round_trip():
    model = repae_sit()
    scale, bias = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1), torch.tensor([1.0, -2.0, 0.0, 3.0]).view(1, 4, 1, 1)
    model.init_bn(scale, bias)
    torch.testing.assert_close(model.bn.running_var, torch.tensor([4.0, 1.0, 0.25, 0.0625]))
    stats = model.extract_latents_stats()
    torch.testing.assert_close(stats["latents_scale"], scale)
    torch.testing.assert_close(stats["latents_bias"], bias)


def test_train_mode_normalises_with_the_batch_and_moves_the_running_statistics():
    model, (x, y, zs) = repae_sit().train(), batch()
    objective = InterpolantObjective(proj_coeff=0.5)
    t, noise = objective.draw(x)
    objective(model, x, y, zs, t=t, noise=noise)
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(model.bn.running_mean, 0.1 * mean)  # (1 - m) 0 + m mean
    torch.testing.assert_close(model.bn.running_var, 0.9 + 0.1 * var)


def test_eval_mode_normalises_with_the_running_statistics_and_leaves_them():
    model, (x, y, zs) = repae_sit().eval(), batch()
    model.init_bn(torch.full((4,), 0.5), torch.full((4,), 3.0))
    before = copy.deepcopy(model.bn.state_dict())
    objective = InterpolantObjective(proj_coeff=0.0)
    t, noise = objective.draw(x)
    losses = objective(model, x, y, zs, t=t, noise=noise)
    assert all(torch.equal(before[k], v) for k, v in model.bn.state_dict().items())
    x_hat = (x - 3.0) / torch.sqrt(torch.tensor(4.0) + 1e-4)
    del model.bn
    torch.testing.assert_close(objective(model, x_hat, y, zs, t=t, noise=noise)["loss"], losses["loss"])


def test_given_time_and_noise_replace_the_draws():
    model, (x, y, zs) = repae_sit().eval(), batch()
    objective = InterpolantObjective(proj_coeff=0.5)
    t, noise = objective.draw(x)
    first = objective(model, x, y, zs, t=t, noise=noise)["loss"]
    torch.manual_seed(123)  # other global draws
    assert torch.equal(objective(model, x, y, zs, t=t, noise=noise)["loss"], first)


def test_align_only_is_the_projection_loss_of_the_first_blocks_and_reaches_the_latents():
    model, (x, y, zs) = repae_sit(depth=3).eval(), batch()
    objective = InterpolantObjective(proj_coeff=0.5)
    t, noise = objective.draw(x)
    x = x.requires_grad_(True)
    align = objective(model, x, y, zs, t=t, noise=noise, align_only=True)
    assert set(align) == {"proj", "loss"}
    with torch.no_grad():
        x_t = (1 - t) * model.bn(x) + t * noise
        full = projection_loss(zs, model(x_t, t.flatten(), y)[1])
    torch.testing.assert_close(align["loss"], full)
    align["loss"].backward()
    assert x.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert model.blocks[1].attn.qkv.weight.grad is None and model.final_layer.linear.weight.grad is None


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_the_ema_averages_the_batchnorm_statistics(decay):
    model, (x, y, zs) = repae_sit().train(), batch()
    ema = copy.deepcopy(model)
    InterpolantObjective().__call__(model, x, y, zs)
    update_ema(ema, model, decay)
    torch.testing.assert_close(ema.bn.running_mean, (1 - decay) * model.bn.running_mean)
    torch.testing.assert_close(ema.bn.running_var, decay * 1.0 + (1 - decay) * model.bn.running_var)
    assert ema.bn.num_batches_tracked == model.bn.num_batches_tracked
