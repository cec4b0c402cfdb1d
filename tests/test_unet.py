"""The class-conditional U-Net system: model, CIFAR-10 reader, overfit mode, schedules and its Makefile workflow."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

import train
from imagedata.cifar10 import CIFAR10Images
from models import create_model
from training.schedule import lr_at
from training.visual import grid_labels

TINY_UNET = ["--model", "UNet-Ti", "--image-size", "16", "--num-classes", "10", "--vae", "none",
             "--num-workers", "0"]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every parameter moved off its (partly zero) initialisation."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def write_fake_cifar10(root, per_batch: int = 10) -> None:
    """CIFAR-10's python layout with ``per_batch`` images per batch; image i of a batch is class i % 10."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


@pytest.mark.parametrize("size", [16, 32, 128])
def test_unet_maps_images_to_eps_of_the_same_shape(size):
    torch.manual_seed(0)
    model = create_model("UNet-Ti", input_size=size, num_classes=10)
    out = model(torch.randn(2, 3, size, size), torch.tensor([0, 999]), torch.tensor([3, 10]))  # 10 = null class
    assert out.shape == (2, 3, size, size)
    sigma = create_model("UNet-Ti", input_size=size, num_classes=10, learn_sigma=True)
    assert sigma(torch.randn(1, 3, size, size), torch.tensor([5]), torch.tensor([1])).shape == (1, 6, size, size)


def test_unet_default_is_the_cifar10_configuration():
    model = create_model("UNet", input_size=32, num_classes=10)
    assert model.conv_in.out_channels == 64
    assert model.t_embedder.mlp[-1].out_features == 128 and model.y_embedder.embedding_table.embedding_dim == 128
    assert model.y_embedder.embedding_table.num_embeddings == 11  # ten classes and the null class
    # N(0, 1) like the time signal (ADM); DiT's 0.02 left the overfit U-Net drawing other classes' images
    assert model.y_embedder.embedding_table.weight.std() > 0.5


def test_unet_output_depends_on_class_and_time():
    torch.manual_seed(0)
    model = perturbed(create_model("UNet-Ti", input_size=16, num_classes=10))
    x = torch.randn(1, 3, 16, 16).repeat(3, 1, 1, 1)
    out = model(x, torch.tensor([500, 500, 100]), torch.tensor([0, 1, 0]))
    assert not torch.allclose(out[0], out[1], atol=1e-4), "different classes gave the same output"
    assert not torch.allclose(out[0], out[2], atol=1e-4), "different times gave the same output"
    again = model(x[:1], torch.tensor([500]), torch.tensor([0]))
    assert torch.allclose(out[:1], again, atol=1e-5), "eval mode must not drop labels"


def test_unet_guidance_combines_the_two_halves():
    torch.manual_seed(0)
    model = perturbed(create_model("UNet-Ti", input_size=16, num_classes=10))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    cond, uncond = model(x, t, torch.tensor([2])), model(x, t, torch.tensor([10]))
    guided = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.tensor([2, 10]), cfg_scale=3.0)
    assert torch.allclose(guided[:1], uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_unet_refuses_a_size_it_cannot_halve():
    with pytest.raises(ValueError, match="does not halve"):
        create_model("UNet", input_size=20, num_classes=10)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_at(0, 1.0, "constant", warmup_steps=4) == pytest.approx(0.25)
    assert lr_at(3, 1.0, "cosine", warmup_steps=4, total_steps=14) == pytest.approx(1.0)
    assert lr_at(9, 1.0, "cosine", warmup_steps=4, total_steps=14) == pytest.approx(0.5)  # half way: cos(pi/2)
    assert lr_at(14, 1.0, "cosine", warmup_steps=4, total_steps=14, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(9, 2.0, "linear", warmup_steps=4, total_steps=14) == pytest.approx(1.0)
    assert lr_at(10**6, 3e-4, "constant") == 3e-4


def test_grids_have_one_row_per_class_when_classes_are_few():
    labels, nrow = grid_labels(10)
    assert labels.tolist() == [c for c in range(10) for _ in range(4)] and nrow == 4
    labels, nrow = grid_labels(2)
    assert labels.tolist() == [0] * 8 + [1] * 8 and nrow == 8
    labels, nrow = grid_labels(1000)
    assert len(labels) == 16 and len(set(labels.tolist())) == 16


def test_cifar10_reader_upscales_and_labels(tmp_path):
    write_fake_cifar10(tmp_path)
    ds = CIFAR10Images(tmp_path, image_size=64)
    x, y = ds[3]
    assert len(ds) == 50 and y == 3 and ds.classes[0] == "airplane"
    assert x.shape == (3, 64, 64) and -1.0 <= x.min() and x.max() <= 1.0
    small = CIFAR10Images(tmp_path, image_size=32)[3][0]
    raw = torch.from_numpy(small.numpy())
    assert torch.allclose((raw + 1) * 127.5, torch.from_numpy(ds.data[3]).float(), atol=1e-4)


def test_cifar10_missing_and_not_downloadable_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ValueError, match="could not be downloaded.*--dataset builtin"):
        CIFAR10Images(tmp_path / "nowhere")


@pytest.mark.slow
def test_overfit_two_images_drives_the_loss_down_and_reports(tmp_path, monkeypatch):
    import evaluations.proxy as proxy

    untrained = proxy.ProxyClassifier(2).eval()  # the real classifier trains for a minute; the report is tested
    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *a, **k: untrained)
    train.main(train.parse_args([*TINY_UNET, "--num-classes", "2", "--dataset", "builtin", "--overfit",
                                 "--samples", "1", "--global-batch-size", "2", "--epochs", "150", "--lr", "3e-3",
                                 "--lr-warmup-steps", "10", "--log-every", "25", "--ckpt-every", "150",
                                 "--ema-decay", "0.9", "--eval-sampling-steps", "5",
                                 "--results-dir", str(tmp_path)]))
    run = tmp_path / "000-UNet-Ti"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.3 * losses[0], losses
    assert sorted(p.name for p in (run / "checkpoints_overfit").iterdir()) == ["0000150.pt"]
    assert not (run / "checkpoints").exists()
    report = json.loads((run / "overfit_report.json").read_text())
    assert report["images"] == 2 and 0 <= report["mean_pixel_error"] <= 255 and "class_accuracy" in report
    assert (run / "overfit_samples.png").is_file()
    ckpt = torch.load(run / "checkpoints_overfit" / "0000150.pt", weights_only=False)
    assert ckpt["args"]["noise_schedule"] == "cosine" and ckpt["args"]["max_grad_norm"] == 1.0


@pytest.mark.slow
def test_training_follows_the_lr_schedule(tmp_path):
    train.main(train.parse_args([*TINY_UNET, "--dataset", "builtin", "--global-batch-size", "4", "--max-steps", "8",
                                 "--lr", "1e-3", "--lr-warmup-steps", "4", "--lr-schedule", "linear",
                                 "--log-every", "1", "--ckpt-every", "100", "--results-dir", str(tmp_path)]))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "000-UNet-Ti" / "metrics.jsonl").read_text().splitlines()]
    expected = [lr_at(s, 1e-3, "linear", 4, 8) for s in range(8)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("flags, message", [
    (["--model", "DiT-Ti/4", "--base-channels", "32"], r"it is a U-Net \(DDPM\) flag"),
    (["--model", "UNet-Ti", "--enc-type", "dinov2-vit-b"], "does not apply to UNet-Ti"),
    (["--model", "UNet-Ti", "--channel-mult", "1,x"], "comma-separated"),
])
def test_family_flags_are_refused_or_checked(flags, message):
    args = train.parse_args(["--dataset", "builtin", "--vae", "none", "--image-size", "16", *flags])
    with pytest.raises(ValueError, match=message):
        train.validate(args)


@pytest.mark.slow
def test_unet_shape_flags_reach_the_model_and_the_sampler(tmp_path):
    train.main(train.parse_args([*TINY_UNET, "--dataset", "builtin", "--global-batch-size", "4", "--max-steps", "1",
                                 "--base-channels", "8", "--channel-mult", "1,2,2", "--time-emb-dim", "16",
                                 "--class-emb-dim", "24", "--num-res-blocks", "1", "--dropout", "0",
                                 "--ckpt-every", "1", "--results-dir", str(tmp_path)]))
    ckpt = torch.load(tmp_path / "000-UNet-Ti" / "checkpoints" / "0000001.pt", weights_only=False)
    assert ckpt["model_kwargs"]["channel_mult"] == (1, 2, 2) and ckpt["model"]["conv_in.weight"].shape[0] == 8
    assert ckpt["model"]["y_embedder.embedding_table.weight"].shape == (11, 24)
    out = tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "000-UNet-Ti" / "checkpoints" /
                           "0000001.pt"), "--num-sampling-steps", "2", "--samples", "2", "--class-labels", "0", "1",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()


def make(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["make", "--no-print-directory", *args, "NEEDS=", f"PYTHON={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_makefile_workflow_quick_test_generate_status_clean(tmp_path):
    write_fake_cifar10(tmp_path / "cifar")
    common = [f"RESULTS={tmp_path / 'results'}", "MODEL=UNet-Ti", "IMAGE_SIZE=16", f"DATA_PATH={tmp_path / 'cifar'}"]
    proc = make("quick-test", *common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "results" / "000-UNet-Ti"
    assert (run / "checkpoints_overfit" / "0000002.pt").is_file() and (run / "overfit_report.json").is_file()
    proc = make("train", *common, "TRAIN_FLAGS=--global-batch-size 10 --max-steps 1 --ckpt-every 1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trained = tmp_path / "results" / "001-UNet-Ti"
    proc = make("generate", *common, "GEN_STEPS=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "newest checkpoint: " + str(trained / "checkpoints" / "0000001.pt") in proc.stdout
    assert (trained / "generated.png").is_file()
    proc = make("status", *common)
    assert "000-UNet-Ti: UNet-Ti 16px on cifar10, overfit (1 per class)" in proc.stdout
    assert "checkpoints_overfit/0000002.pt" in proc.stdout
    if shutil.which("nvidia-smi") is None:  # with a GPU, monitor polls nvidia-smi instead
        proc = subprocess.run(["timeout", "10", "make", "--no-print-directory", "monitor", *common, "NEEDS=",
                               f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "following the newest run's log" in proc.stdout and "step=1" in proc.stdout  # tail -f of 001's log
    for target in ("gpu-status", "clean-cuda"):
        proc = make(target, *common)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CUDA available" in make("gpu-status", *common).stdout
    assert make("clean", *common, "OUTPUTS=").returncode == 0 and not (tmp_path / "results").exists()
    proc = make("generate", *common)
    assert proc.returncode != 0 and "no checkpoints under" in proc.stderr


def test_unet_defaults_are_cifar10s_and_offline_falls_back_to_builtin(tmp_path, monkeypatch):
    import socket

    import imagedata.cifar10 as cifar

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert cifar.default_dataset(tmp_path / "none") == "builtin"
    write_fake_cifar10(tmp_path / "have")
    assert cifar.default_dataset(tmp_path / "have") == "cifar10"
    args = train.parse_args(["--model", "UNet-Ti"])
    train.validate(args)
    assert (args.image_size, args.num_classes, args.vae, args.noise_schedule) == (128, 10, "none", "cosine")
    args = train.parse_args(["--model", "DiT-Ti/4"])
    train.validate(args)
    assert (args.image_size, args.num_classes, args.vae, args.noise_schedule) == (256, 1000, "ema", "linear")


@pytest.mark.slow
def test_overfit_batch_is_every_image_when_the_default_is_larger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # datasets/cifar10 is absent here, and the network is off
    import socket

    import evaluations.proxy as proxy

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *a, **k: proxy.ProxyClassifier(10).eval())
    train.main(train.parse_args(["--model", "UNet-Ti", "--image-size", "16", "--overfit", "--samples", "1",
                                 "--epochs", "1", "--num-workers", "0", "--eval-sampling-steps", "2",
                                 "--results-dir", str(tmp_path / "r")]))
    saved = json.loads((tmp_path / "r" / "000-UNet-Ti" / "args.json").read_text())
    assert saved["global_batch_size"] == 10 and saved["dataset"] == "builtin"


def test_the_seeds_entry_points_parse_to_its_recipes():
    """train_model.py --full | --overfit --samples N and generate_samples.py CKPT --samples N, as the U-Net's seed
    project runs them; a train.py flag after the mode wins over the recipe."""
    import generate_samples
    import train_model

    full = train_model.parse_args(["--full"])
    assert (full.model, full.global_batch_size, full.epochs, full.lr, full.lr_schedule, full.ema_decay) == \
        ("UNet", 128, 100, 2e-4, "cosine", 0.9999) and not full.overfit
    over = train_model.parse_args(["--overfit", "--samples", "2", "--epochs", "2", "--image-size", "16"])
    assert over.overfit and (over.samples, over.global_batch_size, over.epochs, over.image_size) == (2, 20, 2, 16)
    with pytest.raises(SystemExit):
        train_model.parse_args(["--full", "--overfit"])
    args = generate_samples.parse_args(["runs/000-UNet/checkpoints/0000500.pt", "--samples", "4"])
    assert (args.ckpt, args.samples, args.class_labels, args.sampler) == \
        ("runs/000-UNet/checkpoints/0000500.pt", 4, list(range(10)), "ddpm")
    assert args.output.endswith("000-UNet/generated.png") and args.cfg_scale == 2.0
