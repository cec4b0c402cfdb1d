"""REPA-E's trainable VAEs (models/vae.py: VAE, VAE_models, LDM names) against the original
(fixtures from End2End-Diffusion/REPA-E @ 3ad8046, tests/fixtures/record_repae_vae.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.vae import VAE, VAE_models, from_ldm_state_dict, to_ldm_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "repae_vae_keys.json").read_text())
PARAMETERS = {"f8d4": 83_653_863, "f16d32": 69_836_067}  # the counts; f8d4 is SD-VAE's


@pytest.mark.parametrize("name", ["f8d4", "f16d32"])
def test_released_names_and_shapes_round_trip(name):
    with torch.device("meta"):
        model = VAE_models[name]()
    ours = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name] == KEYS[name]["parameters"]
    ldm = to_ldm_state_dict(ours)
    assert {k: list(v.shape) for k, v in ldm.items()} == dict(KEYS[name]["keys"])  # names and shapes
    back = from_ldm_state_dict(ldm)
    assert list(back) == list(ours) and all(back[k].shape == ours[k].shape for k in ours)


def test_round_trip_keeps_values_and_loads_strictly():
    model = VAE_models["tiny-f4d4"]()
    sd = model.state_dict()
    back = from_ldm_state_dict(to_ldm_state_dict(sd))
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    VAE_models["tiny-f4d4"]().load_state_dict(back, strict=True)


def test_outputs_match_repae_autoencoder():
    ref = torch.load(FIXTURES / "repae_vae_tiny_reference.pt")
    cfg = ref["config"]
    model = VAE(**cfg).eval()
    model.load_state_dict(from_ldm_state_dict({k: v.float() for k, v in ref["state_dict"].items()}), strict=True)
    with torch.no_grad():
        posterior = model.encode(ref["x"])
        recon = model.decode(ref["latent"])
    torch.testing.assert_close(posterior.mean, ref["mean"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(posterior.logvar, ref["logvar"], atol=1e-5, rtol=1e-5)
    assert posterior.logvar.max() == 20 and posterior.logvar.min() == -30  # clamped as the original
    torch.testing.assert_close(posterior.kl(), ref["kl"], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(recon, ref["recon"], atol=1e-5, rtol=1e-5)


def test_forward_returns_posterior_sample_and_reconstruction_with_gradients():
    model = VAE_models["tiny-f4d4"]()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior, z, recon = model(x)
    assert z.shape == (2, 4, 4, 4) and recon.shape == x.shape and model.downsample == 4
    recon.square().mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the reparameterised sample


def test_a_state_dict_that_is_no_vae_is_refused():
    with pytest.raises(ValueError, match="no encoder levels"):
        from_ldm_state_dict({"blocks.0.weight": torch.zeros(1)})
