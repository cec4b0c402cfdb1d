"""``--enc-type simclr-builtin``: a SimCLR encoder of the built-in images, trained on first use and cached, selectable
wherever an encoder is; its linear probe (docs/notes/alignment-demo.md measures the full training: 0.905 against
0.343 for the random ViT and 0.313 for pixels). Here a short training on few images keeps the tier fast."""

from __future__ import annotations

import pytest
import torch

from methods import ssl_encoder
from models import hub
from models.encoders import ENCODERS, load_encoders


@pytest.fixture
def short(monkeypatch, tmp_path):
    """A 20-step training on 2,000 images, into a cache of the test's own."""
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(ssl_encoder, "STEPS", 20)
    monkeypatch.setattr(ssl_encoder, "IMAGES", 2000)
    monkeypatch.setattr(ssl_encoder, "BATCH", 64)
    return tmp_path / "encoders" / ENCODERS["simclr-builtin"].files[0]


def test_trained_on_first_use_cached_and_loaded_as_any_encoder(short):
    with pytest.raises(ValueError, match="train it with python -m methods.ssl_encoder"):
        load_encoders("simclr-builtin", "cpu", 16)
    ssl_encoder.ensure("tiny-vit")  # not named: nothing trains
    assert not short.exists()
    state = torch.random.get_rng_state()
    ssl_encoder.ensure("simclr-builtin")
    assert torch.equal(state, torch.random.get_rng_state()) and short.is_file()
    written = short.stat().st_mtime_ns
    ssl_encoder.ensure("tiny-vit,simclr-builtin")
    assert short.stat().st_mtime_ns == written  # cached: not trained again
    (encoder,) = load_encoders("simclr-builtin", "cpu", 16)
    raw = torch.randint(0, 256, (2, 3, 16, 16)).float()
    tokens, cls = encoder(encoder.preprocess(raw))
    assert tokens.shape == (2, 16, 96) and cls.shape == (2, 96)
    (at32,) = load_encoders("simclr-builtin", "cpu", 32)  # another grid: the position table resampled
    assert at32(at32.preprocess(torch.zeros(1, 3, 32, 32)))[0].shape == (1, 64, 96)


def test_simclr_loss_and_the_probe():
    """NT-Xent is low when each view's partner is its nearest; the probe separates separable features."""
    z = torch.randn(8, 16)
    assert ssl_encoder.nt_xent(torch.cat([z, z])) < ssl_encoder.nt_xent(torch.cat([z, torch.randn(8, 16)]))
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.nn.functional.one_hot(y, 4).float() * 3 + torch.randn(200, 4, generator=g) * 0.3
    assert ssl_encoder.linear_probe(x[:100], y[:100], x[100:], y[100:]) == 1.0


@pytest.mark.slow
def test_a_short_training_already_beats_the_random_encoder(short, monkeypatch):
    """200 SimCLR steps of 128 images lift the probe above the same ViT at random (the full training: 0.905)."""
    monkeypatch.setattr(ssl_encoder, "STEPS", 200)
    monkeypatch.setattr(ssl_encoder, "BATCH", 128)
    monkeypatch.setattr(ssl_encoder, "PROBE_TRAIN", range(100_000, 101_000))
    monkeypatch.setattr(ssl_encoder, "PROBE_TEST", range(200_000, 200_500))
    ssl_encoder.ensure("simclr-builtin")
    report = ssl_encoder.probe_report()
    assert report["simclr-builtin"] > report["random init"] + 0.05, report
