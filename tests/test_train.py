"""train.py end to end on the built-in dataset: outputs, learning, exact resume, and errors for people."""

import json

import pytest
import torch
from conftest import TINY_TRAIN, run_script

import train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_has_log_checkpoints_plot_and_grids(trained_run):
    assert trained_run.name == "000-DiT-Ti-4"
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["0000010.pt", "0000020.pt"]
    assert (trained_run / "loss.png").stat().st_size > 0
    assert (trained_run / "samples" / "0000020.png").is_file()
    assert "steps_per_sec" in (trained_run / "log.txt").read_text()
    ckpt = torch.load(trained_run / "checkpoints" / "0000020.pt", weights_only=False)
    assert set(ckpt) >= {"model", "ema", "opt", "args", "steps", "rng", "data"}
    assert ckpt["steps"] == 20 and ckpt["args"]["model"] == "DiT-Ti/4"
    assert not any(p.suffix == ".tmp" for p in (trained_run / "checkpoints").iterdir())


def test_short_training_lowers_the_loss(tmp_path):
    train.main(train.parse_args([*TINY_TRAIN, "--results-dir", str(tmp_path), "--max-steps", "120",
                                 "--log-every", "20", "--ckpt-every", "1000", "--global-batch-size", "32"]))
    losses = [r["loss"] for r in read_metrics(tmp_path / "000-DiT-Ti-4")]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses


def test_resume_continues_identically(tmp_path):
    common = [*TINY_TRAIN, "--log-every", "1", "--ckpt-every", "3"]
    train.main(train.parse_args([*common, "--results-dir", str(tmp_path / "a"), "--max-steps", "6"]))
    train.main(train.parse_args([*common, "--results-dir", str(tmp_path / "b"), "--max-steps", "3"]))
    run_b = tmp_path / "b" / "000-DiT-Ti-4"
    train.main(train.parse_args([*common, "--results-dir", str(tmp_path / "b"), "--max-steps", "6",
                                 "--resume", str(run_b)]))
    a = torch.load(tmp_path / "a" / "000-DiT-Ti-4" / "checkpoints" / "0000006.pt", weights_only=False)
    b = torch.load(run_b / "checkpoints" / "0000006.pt", weights_only=False)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    assert [r["loss"] for r in read_metrics(tmp_path / "a" / "000-DiT-Ti-4")] == \
        [r["loss"] for r in read_metrics(run_b)]
    assert a["data"] == b["data"]


@pytest.mark.slow
def test_nan_loss_stops_and_names_the_last_checkpoint(tmp_path):
    proc = run_script("train.py", *TINY_TRAIN, "--results-dir", str(tmp_path), "--max-steps", "50",
                      "--ckpt-every", "1", "--log-every", "1", "--lr", "1e30")
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became") and "at step" in last and "last good checkpoint" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eval_every_records_a_proxy_metric_curve(tmp_path, monkeypatch):
    import evaluations.proxy as proxy

    untrained = proxy.ProxyClassifier(10).eval()  # the real one trains for a minute; scoring is what is tested
    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *a, **k: untrained)
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    train.main(train.parse_args([*TINY_TRAIN, "--results-dir", str(tmp_path), "--max-steps", "4",
                                 "--log-every", "2", "--ckpt-every", "100", "--eval-every", "2",
                                 "--eval-samples", "20", "--eval-sampling-steps", "3"]))
    run_dir = tmp_path / "000-DiT-Ti-4"
    curve = [json.loads(line) for line in (run_dir / "proxy_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [2, 4]
    assert all(0.0 <= r["class_accuracy"] <= 1.0 and r["proxy_fd"] >= 0 for r in curve)
    assert (run_dir / "eval_samples.png").is_file()


@pytest.mark.slow
def test_eval_every_needs_the_builtin_dataset(tmp_path):
    proc = run_script("train.py", "--data-path", str(tmp_path), "--eval-every", "10", "--vae", "none")
    assert proc.returncode == 2 and "--dataset builtin" in proc.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("sharding", [[], ["--fsdp", "--eval-every", "4", "--eval-samples", "10",
                                           "--eval-sampling-steps", "2"]], ids=["ddp", "fsdp"])
def test_torchrun_two_gloo_processes_train_and_resume(tmp_path, sharding):
    launch = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "train.py", *TINY_TRAIN,
              "--results-dir", str(tmp_path), "--log-every", "2", "--ckpt-every", "2", *sharding]
    proc = run_script(*launch, "--max-steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "000-DiT-Ti-4"
    ckpt = torch.load(run_dir / "checkpoints" / "0000002.pt", weights_only=False)
    assert len(ckpt["rng"]) == 2  # one random state per process
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    proc = run_script(*launch, "--max-steps", "4", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "0000004.pt", weights_only=False)["steps"] == 4
    assert "2 process(es)" in (run_dir / "log.txt").read_text()
    assert (run_dir / "samples" / "0000004.png").is_file()  # sampled from the EMA, gathered when sharded
    if sharding:
        assert json.loads((run_dir / "proxy_metrics.json").read_text())["step"] == 4
        assert ckpt["model"]["blocks.0.attn.qkv.weight"].shape == (192, 64)  # full weights, not a shard


@pytest.mark.slow
def test_eval_ref_records_an_inception_metric_curve(tmp_path, monkeypatch):
    import numpy as np
    from eval_stand_in import StandInInception

    import evaluations.evaluator as evaluator
    import evaluations.proxy as proxy
    from imagedata.procedural import render_batch

    monkeypatch.setattr(evaluator, "load_inception", lambda *a, **k: StandInInception())
    untrained = proxy.ProxyClassifier(10).eval()
    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *a, **k: untrained)
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=render_batch(range(40), seed=7, resolution=16))
    train.main(train.parse_args([*TINY_TRAIN, "--results-dir", str(tmp_path), "--max-steps", "4",
                                 "--log-every", "2", "--ckpt-every", "100", "--eval-every", "2",
                                 "--eval-ref", str(ref), "--eval-samples", "12", "--eval-sampling-steps", "3"]))
    run_dir = tmp_path / "000-DiT-Ti-4"
    curve = [json.loads(line) for line in (run_dir / "inception_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [2, 4]
    for r in curve:
        assert r["fid"] > 0 and r["sfid"] > 0 and r["inception_score"] >= 1
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["num_samples"] == 12
    assert (run_dir / "proxy_metrics.jsonl").exists()  # the built-in dataset is scored by its proxy as well



def test_gradient_accumulation_multiplies_the_batch_as_repa_does(tmp_path, monkeypatch):
    """REPA's count: two accumulated micro-batches of --batch-size 8 take the step of one batch of 16."""
    class Deterministic:  # no random t or noise, so two micro-batches of 8 and one batch of 16 see the same loss
        def __init__(self, diffusion):
            pass

        def __call__(self, model, x, y):
            t = torch.full((x.shape[0],), 500, device=x.device)
            return {"loss": ((model(x, t, y)[:, :3] - x) ** 2).mean()}

    import imagedata.inputs
    import methods.denoising_cli

    monkeypatch.setattr(methods.denoising_cli, "DDPMObjective", Deterministic)
    monkeypatch.setattr(imagedata.inputs, "random_flip", lambda x: (x, None))
    common = [*TINY_TRAIN, "--max-steps", "2", "--log-every", "1", "--ckpt-every", "2", "--cfg-prob", "0"]
    train.main(train.parse_args([*common, "--results-dir", str(tmp_path / "a"), "--global-batch-size", "16"]))
    train.main(train.parse_args([*common, "--results-dir", str(tmp_path / "b"), "--global-batch-size", "8",
                                 "--gradient-accumulation-steps", "2"]))
    a = torch.load(tmp_path / "a" / "000-DiT-Ti-4" / "checkpoints" / "0000002.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "000-DiT-Ti-4" / "checkpoints" / "0000002.pt", weights_only=False)
    assert a["data"] == b["data"] == {"epoch": 0, "position": 32}
    assert "global batch 16 (2 micro-batches of 8)" in (tmp_path / "b" / "000-DiT-Ti-4" / "log.txt").read_text()
    assert [r["loss"] for r in read_metrics(tmp_path / "b" / "000-DiT-Ti-4")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "a" / "000-DiT-Ti-4")], rel=1e-5)
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-6), name


def test_adam_flags_reach_the_optimizer(tmp_path, quick_grids):
    train.main(train.parse_args([*TINY_TRAIN, "--max-steps", "1", "--ckpt-every", "1", "--results-dir", str(tmp_path),
                                 "--adam-beta1", "0.8", "--adam-beta2", "0.95", "--adam-weight-decay", "0.01",
                                 "--adam-epsilon", "1e-6"]))
    group = torch.load(tmp_path / "000-DiT-Ti-4" / "checkpoints" / "0000001.pt", weights_only=False)["opt"]
    group = group["param_groups"][0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.01 and group["eps"] == 1e-6


def test_max_grad_norm_clips_the_update(tmp_path, quick_grids):
    """Gradients clipped to a norm far below Adam's epsilon barely move the weights (unclipped, Adam's first
    step moves each trained weight by about the learning rate, 1e-3): the EMA (decay 0.9999) stays by them."""
    train.main(train.parse_args([*TINY_TRAIN, "--max-steps", "1", "--ckpt-every", "1", "--results-dir", str(tmp_path),
                                 "--max-grad-norm", "1e-12"]))
    state = torch.load(tmp_path / "000-DiT-Ti-4" / "checkpoints" / "0000001.pt", weights_only=False)
    moved = max((state["model"][k] - v).abs().max() for k, v in state["ema"].items())
    assert moved < 1e-6, f"the weights moved by {moved:.2e} with gradients clipped to 1e-12"


def test_batch_sizes_split_the_batch_over_processes_and_accumulation_multiplies_it():
    from training.data import batch_sizes

    assert batch_sizes(256, 8, 1, "--batch-size") == (32, 256)
    assert batch_sizes(256, 8, 2, "--batch-size") == (32, 512)
    with pytest.raises(ValueError, match="--batch-size 256 is not divisible by 3 processes"):
        batch_sizes(256, 3, 1, "--batch-size")
