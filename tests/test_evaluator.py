"""The evaluator: IS with known answers, ADM-format reference batches, chunked .npz reading, streamed
statistics, evaluate() and the command. The Inception is replaced by a cheap stand-in with its interface
(tests/eval_stand_in.py); the network itself is tested in tests/test_inception.py."""

import json

import numpy as np
import pytest
import torch
from eval_stand_in import StandInInception, random_images
from PIL import Image

import evaluations.evaluator as evaluator
from evaluations.evaluator import evaluate, inception_score, reference_features, save_reference
from evaluations.features import RunningMoments, compute_activations, compute_features
from evaluations.frechet import feature_statistics, frechet_distance
from evaluations.images import NpzImages, open_images

# ---------------------------------------------------------------- Inception Score


def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count():
    probs = np.eye(10)[np.arange(500) % 10]
    assert inception_score(probs) == pytest.approx(10.0, rel=1e-12)


def test_inception_score_two_by_two_by_hand():
    # marginal (3/4, 1/4); KL = 1/2 ln(4/3) and ln(4/3); mean 3/4 ln(4/3)
    assert inception_score([[0.5, 0.5], [1.0, 0.0]]) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)


def test_inception_score_averages_splits_of_5000_with_a_short_last_split():
    # Splits [0, 5000), [5000, 10000): one-hot over 4 balanced classes (IS 4); [10000, 12000): uniform (IS 1).
    probs = np.concatenate([np.eye(4)[np.arange(10_000) % 4], np.full((2_000, 4), 0.25)])
    assert inception_score(probs) == pytest.approx((4 + 4 + 1) / 3, rel=1e-12)


# ---------------------------------------------------------------- reading images in chunks


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_images_are_read_in_batches_and_shards(tmp_path, save):
    images = random_images(11, size=5)
    save(tmp_path / "x.npz", images, np.arange(11))
    source = NpzImages(tmp_path / "x.npz")
    batches = list(source.batches(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert np.array_equal(np.concatenate(batches), images)
    assert np.array_equal(np.concatenate(list(source.batches(3, 5, 11))), images[5:])


@pytest.mark.parametrize("content,needle", [
    (dict(arr_0=np.zeros((2, 4, 4, 3), np.float32)), "float32"),
    (dict(arr_0=np.zeros((2, 4, 4), np.uint8)), "(N, H, W, 3)"),
    (dict(images=np.zeros((2, 4, 4, 3), np.uint8)), "no arr_0"),
])
def test_bad_npz_is_rejected_with_what_was_expected(tmp_path, content, needle):
    np.savez(tmp_path / "x.npz", **content)
    with pytest.raises(ValueError, match="uint8") as error:
        NpzImages(tmp_path / "x.npz")
    assert needle in str(error.value)


# ---------------------------------------------------------------- statistics


def test_streamed_statistics_equal_np_mean_and_cov():
    x = np.random.default_rng(0).normal(0.5, 2.0, size=(300, 7))
    moments = RunningMoments(7, "cpu")
    for i in range(0, 300, 64):
        moments.update(torch.from_numpy(x[i : i + 64]))
    mu, sigma = moments.statistics()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_compute_features_keeps_requested_rows_and_matches_activations():
    model, images = StandInInception(), random_images(20)
    pool, spatial = compute_activations(open_images(images).batches(6), model, progress=False)
    features = compute_features(open_images(images), model, batch_size=6, pool_rows=[1, 6, 19], progress=False)
    np.testing.assert_array_equal(features.pool, pool[[1, 6, 19]])
    for got, want in zip((features.mu, features.sigma, features.mu_s, features.sigma_s),
                         (*feature_statistics(pool), *feature_statistics(spatial))):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- reference batches


def write_adm_batch(path, images, dims=(16, 12), seed=1):
    """An .npz in the layout of ADM's reference batches: images plus precomputed statistics."""
    rng = np.random.default_rng(seed)
    stats = {}
    for suffix, d in zip(("", "_s"), dims):
        a = rng.normal(size=(d, d))
        stats["mu" + suffix], stats["sigma" + suffix] = rng.normal(size=d), a @ a.T / d + np.eye(d)
    np.savez(path, arr_0=images, **stats)
    return stats


def test_adm_reference_batch_statistics_are_read_and_its_images_give_pool_features(tmp_path):
    model, images = StandInInception(), random_images(12, seed=3)
    stats = write_adm_batch(tmp_path / "ref.npz", images)
    reference = reference_features(tmp_path / "ref.npz", model, batch_size=5, progress=False)
    for key, value in stats.items():
        np.testing.assert_array_equal(getattr(reference, key), value)
    # float32 features move in the last bits with the batch composition (here 5 + 5 + 2 vs 12)
    np.testing.assert_allclose(reference.pool, compute_activations([images], model, progress=False)[0], rtol=1e-5)


def test_evaluate_uses_the_reference_statistics(tmp_path):
    model = StandInInception()
    stats = write_adm_batch(tmp_path / "ref.npz", random_images(12, seed=3))
    samples = random_images(30, seed=4)
    metrics = evaluate(tmp_path / "ref.npz", samples, model=model, batch_size=8, progress=False)
    pool, spatial = compute_activations([samples], model, progress=False)
    assert metrics["fid"] == pytest.approx(frechet_distance(*feature_statistics(pool), stats["mu"], stats["sigma"]),
                                           rel=1e-8)
    assert metrics["sfid"] == pytest.approx(
        frechet_distance(*feature_statistics(spatial), stats["mu_s"], stats["sigma_s"]), rel=1e-8)
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1 and metrics["inception_score"] >= 1
    assert metrics["num_samples"] == 30


def test_samples_against_themselves_score_perfectly():
    model, images = StandInInception(), random_images(40, seed=5)
    metrics = evaluate(images, images, model=model, batch_size=16, progress=False)
    assert abs(metrics["fid"]) < 1e-6 and abs(metrics["sfid"]) < 1e-6
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0


def test_statistics_only_reference_gives_fid_and_leaves_the_rest_out(tmp_path):
    model = StandInInception()
    stats = write_adm_batch(tmp_path / "full.npz", random_images(4))
    np.savez(tmp_path / "stats.npz", mu=stats["mu"], sigma=stats["sigma"])  # as MAR keeps ADM's statistics
    metrics = evaluate(tmp_path / "stats.npz", random_images(20), model=model, progress=False)
    assert np.isfinite(metrics["fid"])
    assert metrics["sfid"] is None and metrics["precision"] is None and metrics["recall"] is None


def test_saved_reference_statistics_are_reused_with_the_same_result(tmp_path):
    model, ref_images, samples = StandInInception(), random_images(25, seed=6), random_images(20, seed=7)
    np.savez(tmp_path / "ref_images.npz", ref_images)
    direct = evaluate(tmp_path / "ref_images.npz", samples, model=model, batch_size=7, progress=False)
    save_reference(tmp_path / "stats.npz", reference_features(tmp_path / "ref_images.npz", model, 7, progress=False))
    with np.load(tmp_path / "stats.npz") as saved:
        assert {"mu", "sigma", "mu_s", "sigma_s", "pool_3", "num_images"} <= set(saved.keys())
        assert int(saved["num_images"]) == 25 and saved["pool_3"].shape == (25, 16)
    assert evaluate(tmp_path / "stats.npz", samples, model=model, batch_size=7, progress=False) == direct


# ---------------------------------------------------------------- the command


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(evaluator, "load_inception", lambda *args, **kwargs: StandInInception())


def test_command_prints_adms_five_lines_and_writes_json(tmp_path, capsys, stand_in):
    write_adm_batch(tmp_path / "ref.npz", random_images(12, seed=3))
    np.savez(tmp_path / "samples.npz", random_images(16, seed=8), np.arange(16) % 10)
    evaluator.cli([str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--out", str(tmp_path / "m.json"),
                   "--batch-size", "5", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    saved = json.loads((tmp_path / "m.json").read_text())
    for line, key in zip(lines, ("inception_score", "fid", "sfid", "precision", "recall")):
        assert float(line.split(": ")[1]) == pytest.approx(saved[key], rel=1e-12)


def test_regs_evaluator_call_writes_regs_results_file(tmp_path, capsys, stand_in):
    """REG's eval.sh call as pasted: REF and SAMPLES by flag, the results file under REG's exact name (the save
    path with the settings appended, no separator), ADM's five metrics as REG writes them."""
    write_adm_batch(tmp_path / "ref.npz", random_images(12, seed=3))
    np.savez(tmp_path / "samples.npz", random_images(16, seed=8))
    save = tmp_path / "reg" / "checkpoints"
    evaluator.cli(["--ref_batch", str(tmp_path / "ref.npz"), "--sample_batch", str(tmp_path / "samples.npz"),
                   "--save_path", str(save), "--cfg_cond", "1", "--step", "4000000", "--num_steps", "250",
                   "--cfg", "2.3", "--cls_cfg", "2.3", "--gh", "0.85", "--device", "cpu"])
    printed = capsys.readouterr().out.strip().splitlines()
    results = tmp_path / "reg" / "checkpoints25040000002.30.852.3cfg_cond_true.txt"
    assert save.is_dir() and results.read_text().splitlines() == printed
    assert [line.split(":")[0] for line in printed] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    with pytest.raises(SystemExit) as exit_info:
        evaluator.parse_args([str(tmp_path / "ref.npz"), "--sample_batch", str(tmp_path / "samples.npz")])
    assert exit_info.value.code == 2 and "not a mix" in capsys.readouterr().err


def test_command_saves_reference_statistics_of_a_folder(tmp_path, capsys, stand_in):
    for i, cls in enumerate(("a", "b")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for j in range(4):
            Image.fromarray(random_images(1, size=12, seed=10 * i + j)[0]).save(tmp_path / "data" / cls / f"{j}.png")
    evaluator.cli([str(tmp_path / "data"), "--ref-stats", str(tmp_path / "ref.npz"), "--image-size", "8"])
    assert capsys.readouterr().out == ""
    with np.load(tmp_path / "ref.npz") as saved:
        assert saved["pool_3"].shape == (8, 16) and saved["mu_s"].shape == (12,)


def test_proxy_only_scores_builtin_samples(tmp_path, capsys, monkeypatch):
    import evaluations.proxy as proxy
    from imagedata.procedural import render_batch

    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    untrained = proxy.ProxyClassifier(10).eval()  # the real one trains for a minute; the wiring is what is tested
    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *args, **kwargs: untrained)
    np.savez(tmp_path / "samples.npz", render_batch(np.arange(20), seed=0, resolution=16), np.arange(20) % 10)
    evaluator.cli([str(tmp_path / "samples.npz"), "--proxy", "--num-classes", "10"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Proxy class accuracy", "Proxy FD"]
    assert 0 <= float(lines[0].split(": ")[1]) <= 1 and float(lines[1].split(": ")[1]) >= 0


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluator.cli(argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_command_errors_are_one_line(tmp_path, capsys, stand_in):
    np.savez(tmp_path / "ok.npz", random_images(8))
    np.savez(tmp_path / "float.npz", random_images(8).astype(np.float32))
    np.savez(tmp_path / "nothing.npz", labels=np.arange(3))
    assert "missing.npz does not exist" in _one_line_error(capsys, [str(tmp_path / "missing.npz"),
                                                                    str(tmp_path / "ok.npz")])
    assert "float32" in _one_line_error(capsys, [str(tmp_path / "ok.npz"), str(tmp_path / "float.npz")])
    assert "neither images" in _one_line_error(capsys, [str(tmp_path / "nothing.npz"), str(tmp_path / "ok.npz")])


def test_missing_inception_weights_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DIFFUSION_LAB_OFFLINE", "1")
    monkeypatch.delenv("DIFFUSION_LAB_INCEPTION", raising=False)
    np.savez(tmp_path / "ok.npz", random_images(8))
    message = _one_line_error(capsys, [str(tmp_path / "ok.npz"), str(tmp_path / "ok.npz")])
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(tmp_path / "cache") in message
    assert "https://github.com/toshas/torch-fidelity/releases" in message
