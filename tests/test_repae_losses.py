"""REPA-E's VAE losses: the PatchGAN discriminator against the original (fixture from
End2End-Diffusion/REPA-E @ 3ad8046, tests/fixtures/record_repae_vae.py), KL and hinge losses against
closed forms, the loss YAML, LPIPS' backbone loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from loss.autoencoder import LossConfig, VAELoss, hinge_d_loss, kl_loss, load_loss_config
from loss.perceptual import VGG16_FILE, PerceptualLoss
from models.discriminator import NLayerDiscriminator
from models.vae import VAE_models

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = Path(__file__).parent.parent / "configs" / "l1_lpips_kl_gan.yaml"


def test_discriminator_matches_repae():
    ref = torch.load(FIXTURES / "repae_discriminator_reference.pt")
    full = NLayerDiscriminator()
    assert sum(p.numel() for p in full.parameters()) == ref["parameters"] == 2_765_633
    assert [[k, list(v.shape)] for k, v in full.state_dict().items()] == ref["keys"]
    narrow = NLayerDiscriminator(ndf=8)
    narrow.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref["state_dict"].items()})
    torch.testing.assert_close(narrow.train()(ref["x"]), ref["train_logits"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(narrow.eval()(ref["x"]), ref["eval_logits"], atol=1e-5, rtol=1e-5)


def test_images_too_small_for_the_patchgan_are_refused_in_one_line():
    """Three halvings and two 4x4 convolutions leave nothing of a 16 px image: 24 px is the least."""
    disc = NLayerDiscriminator(ndf=8)
    assert disc(torch.zeros(1, 3, 24, 24)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"needs images of at least 24 px, not \(16, 16\): use a resolution of 24"):
        disc(torch.zeros(1, 3, 16, 16))


def test_kl_loss_is_summed_over_the_latent_and_averaged_over_the_batch():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    per_sample = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(kl_loss(mean, logvar), per_sample.mean())
    assert kl_loss(torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)) == 0  # the prior itself
    posterior = VAE_models["tiny-f4d4"]().encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    torch.testing.assert_close(kl_loss(posterior.mean, posterior.logvar), posterior.kl().mean())


def test_hinge_loss_closed_form():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    expected = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)


def test_the_shipped_loss_config_is_repaes():
    assert load_loss_config(CONFIG) == LossConfig()


@pytest.mark.parametrize("text, message", [
    ("losses:\n  kl_weigth: 1e-6\n", "unknown key.*losses.kl_weigth"),
    ("model:\n  vq_model:\n    quantize_mode: vq\n", "quantize_mode 'vq'"),
    ("losses:\n  lecam_regularization_weight: 0.1\n", "LeCam regularisation is not implemented"),
    ("losses:\n  perceptual_loss: convnext_s\n", "only lpips"),
    ("extra: 1\n", "unknown key.*extra"),
    ("- losses\n- 1\n", "the file is list .*not a mapping"),
    ("just text\n", "the file is str 'just text', not a mapping"),
    ("losses: [1, 2]\n", "losses is list .*not a mapping"),
    ("model: 3\n", "model is int 3, not a mapping"),
    ("model:\n  vq_model: vae\n", "model.vq_model is str 'vae', not a mapping"),
    ("losses:\n  kl_weight: [1, 2]\n", r"losses.kl_weight is \[1, 2\], not a number"),
    ("losses:\n  kl_weight: tiny\n", "losses.kl_weight is 'tiny', not a number"),
    ("losses:\n  discriminator_start: 1.5\n", "losses.discriminator_start is 1.5, not an integer"),
    ("losses:\n  perceptual_loss: 3\n", "losses.perceptual_loss is 3, not a string"),
    ("losses:\n  lpips_normalize: 1\n", "losses.lpips_normalize is 1, not true or false"),
    ("losses: {kl_weight: 1e-6\n", "not valid YAML"),
    ("losses:\n  logvar_init: .nan\n", "losses.logvar_init is nan; give a finite number"),
])
def test_bad_loss_configs_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "loss.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_loss_config(path)
    with pytest.raises(ValueError, match="no such file"):
        load_loss_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("key", ["discriminator_weight", "discriminator_factor", "discriminator_start",
                                 "perceptual_weight", "reconstruction_weight", "kl_weight"])
def test_negative_weights_are_refused_in_one_line(tmp_path, key):
    path = tmp_path / "loss.yaml"
    path.write_text(f"losses:\n  {key}: -1\n")
    with pytest.raises(ValueError, match=f"--loss-cfg-path {path}: losses.{key} is -1.*must be >= 0") as e:
        load_loss_config(path)
    assert "\n" not in str(e.value)
    path.write_text(f"losses:\n  {key}: 0\n")
    assert getattr(load_loss_config(path), key) == 0


def test_the_vae_loss_uses_repaes_lpips_of_2x_minus_1_and_the_key_gives_the_standard_one(tmp_path):
    torch.manual_seed(0)
    perceptual = PerceptualLoss(random_backbone=True)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        repae, standard = perceptual.lpips(2 * x - 1, 2 * y - 1).flatten(), perceptual.lpips(x, y).flatten()
    assert not torch.allclose(repae, standard, rtol=1e-3)
    torch.testing.assert_close(perceptual(x, y), repae)
    torch.testing.assert_close(perceptual(x, y, normalize=False), standard)
    vae, disc = VAE_models["tiny-f4d4"](), NLayerDiscriminator(ndf=8, n_layers=2)
    posterior = vae.encode(x)
    path = tmp_path / "loss.yaml"
    path.write_text("losses:\n  lpips_normalize: false\n")
    for config, expected in ((load_loss_config(CONFIG), repae), (load_loss_config(path), standard)):
        losses = VAELoss(config, perceptual).generator(x, y, posterior, disc, step=0)
        torch.testing.assert_close(losses["perceptual"], expected.mean())


def test_generator_loss_is_the_weighted_sum_and_the_gan_term_waits_for_its_start():
    torch.manual_seed(0)
    vae, disc = VAE_models["tiny-f4d4"](), NLayerDiscriminator(ndf=8, n_layers=2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior, _, recon = vae(x)
    loss = VAELoss(LossConfig(discriminator_start=10), PerceptualLoss(random_backbone=True))
    before = loss.generator(x, recon, posterior, disc, step=9)
    assert "gan" not in before
    after = loss.generator(x, recon, posterior, disc, step=10)
    expected = after["rec"] + after["perceptual"] + after["kl"] + 0.1 * after["gan"]
    torch.testing.assert_close(after["loss"], expected)
    torch.testing.assert_close(after["rec"], (x - recon).abs().mean())
    d = loss.discriminator(x, recon, disc, step=10)
    torch.testing.assert_close(d["loss"], hinge_d_loss(disc(x), disc(recon.detach())))
    assert loss.discriminator(x, recon, disc, step=3)["loss"] == 0


def test_the_reconstruction_term_is_weighted_and_divided_by_exp_logvar():
    """``w_rec * L1(x, r) / exp(logvar_init)`` (REPA-E keeps logvar frozen, 0 in its recipe)."""
    torch.manual_seed(0)
    vae, disc = VAE_models["tiny-f4d4"](), NLayerDiscriminator(ndf=8, n_layers=2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior, _, recon = vae(x)
    for kind, distance in (("l1", (x - recon).abs().mean()), ("l2", (x - recon).pow(2).mean())):
        config = LossConfig(reconstruction_loss=kind, reconstruction_weight=2.0, logvar_init=1.0, perceptual_weight=0.0)
        losses = VAELoss(config).generator(x, recon, posterior, disc, step=0)
        torch.testing.assert_close(losses["rec"], 2.0 * distance / math.e)


@pytest.mark.slow
def test_lpips_reads_the_vgg_backbone_from_a_local_file_and_refuses_offline_without_it(tmp_path, monkeypatch):
    import torchvision

    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / VGG16_FILE)
    lpips = PerceptualLoss(vgg_path=str(tmp_path / VGG16_FILE))
    torch.testing.assert_close(lpips.lpips.net.slice3.state_dict()["12.weight"], vgg.features[12].weight)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(lpips(x, x), torch.zeros(2)) and (lpips(x, -x) > 0).all()
    monkeypatch.setenv("DIFFUSION_LAB_OFFLINE", "1")
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ValueError, match=f"needs torchvision's VGG16 weights {VGG16_FILE}.*--lpips-vgg"):
        PerceptualLoss()


def test_a_random_lpips_backbone_is_the_same_whatever_the_random_state():
    """--lpips-random: each process builds the same network (it is not synchronised like the trained ones)."""
    from loss.perceptual import PerceptualLoss

    torch.manual_seed(1)
    a = PerceptualLoss(random_backbone=True).state_dict()
    torch.manual_seed(2)
    b = PerceptualLoss(random_backbone=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
