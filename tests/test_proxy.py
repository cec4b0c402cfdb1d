"""Proxy metrics of the built-in dataset: the classifier, its cache, class accuracy and proxy FD."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import QUICK_PROXY

import evaluations.proxy as proxy
from evaluations.proxy import (
    ProxyClassifier,
    accuracy,
    get_proxy_classifier,
    proxy_metrics,
    train_proxy_classifier,
)
from imagedata.procedural import render_batch
from models import hub


@pytest.fixture(scope="module")
def quick(quick_proxy):
    """A reduced classifier (conftest's) and its held-out accuracy."""
    return quick_proxy


def _real(n: int, resolution: int = 32, seed: int = 0):
    return render_batch(np.arange(n), seed=seed, resolution=resolution), np.arange(n) % 10


def _noise(n: int, resolution: int = 32):
    return np.random.default_rng(0).integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)


def test_quick_classifier_recognises_real_images_at_any_resolution(quick):
    classifier, held_out = quick
    assert held_out >= 0.9
    for resolution in (16, 64):
        images, labels = _real(300, resolution, seed=7)
        assert accuracy(classifier, torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1, labels) >= 0.85


def test_classifier_is_near_chance_on_noise(quick, tmp_path):
    result = proxy_metrics(_noise(300), np.arange(300) % 10, classifier=quick[0], cache_dir=tmp_path)
    assert result["class_accuracy"] <= 0.3


def test_training_is_deterministic():
    settings = dict(QUICK_PROXY, num_images=200, steps=3, num_held_out=20)
    first, second = train_proxy_classifier(**settings)[0], train_proxy_classifier(**settings)[0]
    assert proxy.fingerprint(first) == proxy.fingerprint(second)


def test_features_are_64d_and_mirror_invariant(quick):
    classifier = quick[0]
    x = torch.rand(4, 3, 48, 48) * 2 - 1
    f = classifier.features(x)
    assert f.shape == (4, proxy.FEATURE_DIM)
    torch.testing.assert_close(classifier.features(x.flip(-1)), f, atol=1e-5, rtol=1e-5)
    assert classifier(x).shape == (4, 10)


def test_proxy_fd_is_small_for_real_images_and_large_for_noise(quick, tmp_path):
    images, labels = _real(300)
    real = proxy_metrics(images, labels, classifier=quick[0], cache_dir=tmp_path)
    float_input = proxy_metrics(torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1, labels,
                                classifier=quick[0], cache_dir=tmp_path)  # fmt: skip
    noise = proxy_metrics(_noise(300), labels, classifier=quick[0], cache_dir=tmp_path)
    assert real["class_accuracy"] >= 0.9
    assert float_input["proxy_fd"] == pytest.approx(real["proxy_fd"], rel=1e-4)
    assert real["proxy_fd"] * 20 < noise["proxy_fd"]
    # wrong labels cost accuracy, not FD
    shifted = proxy_metrics(images, (labels + 1) % 10, classifier=quick[0], cache_dir=tmp_path)
    assert shifted["class_accuracy"] <= 0.1 and shifted["proxy_fd"] == pytest.approx(real["proxy_fd"])


def test_reference_statistics_are_cached_per_classifier(quick, tmp_path):
    mu, sigma = proxy.reference_statistics(quick[0], 32, tmp_path)
    (path,) = tmp_path.glob("proxy_reference_v1_c10_r32.npz")
    stamp = path.stat().st_mtime_ns
    again = proxy.reference_statistics(quick[0], 32, tmp_path)
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again[1], sigma)
    other = ProxyClassifier(10, width=8).eval()  # different weights: recomputed, not reused
    assert not np.allclose(proxy.reference_statistics(other, 32, tmp_path)[0], mu)


def test_cached_classifier_is_loaded_without_training(quick, tmp_path, monkeypatch):
    classifier = quick[0]
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    assert proxy.classifier_path() == tmp_path / "proxy_classifier_v1.pt"
    proxy.save_proxy_classifier(classifier, proxy.classifier_path())
    monkeypatch.setattr(proxy, "train_proxy_classifier", lambda *a, **k: pytest.fail("trained again"))
    loaded = get_proxy_classifier()
    assert proxy.fingerprint(loaded) == proxy.fingerprint(classifier) and not loaded.training


def test_missing_or_damaged_cache_trains_and_saves_atomically(quick, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(proxy, "train_proxy_classifier", lambda *a, **k: calls.append(1) or quick)
    get_proxy_classifier(cache_dir=tmp_path)
    path = tmp_path / "proxy_classifier_v1.pt"
    assert calls == [1] and path.exists()
    assert torch.load(path, weights_only=True)["held_out_accuracy"] == quick[1]
    path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable"):
        get_proxy_classifier(cache_dir=tmp_path)
    assert calls == [1, 1] and sorted(os.listdir(tmp_path)) == ["proxy_classifier_v1.pt"]  # no .tmp left


def test_fewer_classes_use_the_first_ones(tmp_path):
    classifier, _ = train_proxy_classifier(num_classes=3, num_images=60, steps=2, width=8, num_held_out=30)
    assert classifier(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert proxy.classifier_path(3, tmp_path).name == "proxy_classifier_v1_c3.pt"
    images, labels = render_batch(np.arange(30), resolution=16, num_classes=3), np.arange(30) % 3
    result = proxy_metrics(images, labels, num_classes=3, classifier=classifier, cache_dir=tmp_path)
    assert set(result) == {"class_accuracy", "proxy_fd"}
    assert (tmp_path / "proxy_reference_v1_c3_r16.npz").exists()
    with pytest.raises(ValueError, match="knows 3 classes"):
        proxy_metrics(images, labels, num_classes=10, classifier=classifier)
    with pytest.raises(ValueError, match="--num-classes"):
        get_proxy_classifier(11, cache_dir=tmp_path)


def test_bad_inputs_are_clear_errors(quick):
    images, labels = _real(20)
    for bad_images, bad_labels, message in [
        (images[..., :1], labels, "3 channels"),
        (images, labels[:10], "20 images but 10 labels"),
        (images, labels + 5, "labels must lie in 0..9"),
        (images.astype(np.int64), labels, "uint8 NHWC or float NCHW"),
        (images, labels.astype(np.float32) + 0.5, "labels must be integer class indices, got float32"),
    ]:
        with pytest.raises(ValueError, match=message):
            proxy_metrics(bad_images, bad_labels, classifier=quick[0])


def test_cli_prints_both_metrics(quick, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    proxy.save_proxy_classifier(quick[0], proxy.classifier_path())
    images, labels = _real(100)
    np.savez(tmp_path / "samples.npz", images, labels=labels)
    proxy.main([str(tmp_path / "samples.npz")])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"class_accuracy", "proxy_fd"} and result["class_accuracy"] >= 0.9
    np.savez(tmp_path / "unlabelled.npz", images)
    with pytest.raises(SystemExit):
        proxy.main([str(tmp_path / "unlabelled.npz")])
    assert "labels" in capsys.readouterr().err


@pytest.mark.slow
def test_full_classifier_reaches_98_percent_held_out(tmp_path):
    """The session's classifier: trained on first use (by the demo test, which meets the cache empty) or here."""
    classifier = get_proxy_classifier()
    saved = torch.load(proxy.classifier_path(), weights_only=True)
    print(f"full proxy classifier: {saved['train_seconds']:.1f} s, held-out accuracy {saved['held_out_accuracy']:.4f}")
    assert saved["held_out_accuracy"] >= 0.98
    images, labels = _real(500)
    assert proxy_metrics(images, labels, classifier=classifier, cache_dir=tmp_path)["class_accuracy"] >= 0.98


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode,
                                     lambda: torch.autocast("cpu", dtype=torch.bfloat16)])
def test_classifier_trains_the_same_from_any_calling_context(context):
    """It is trained on first use, which may be inside an evaluation under no_grad or inference_mode."""
    settings = dict(QUICK_PROXY, num_images=200, steps=3, num_held_out=20)
    expected = proxy.fingerprint(train_proxy_classifier(**settings)[0])
    with context():
        classifier, _ = train_proxy_classifier(**settings)
    assert proxy.fingerprint(classifier) == expected
