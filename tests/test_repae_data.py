"""REPA-E's data path: images.h5 written by the converter, cache_latents.py (resumable, distributed) and
train_ldm_only.py on the cached latents with the VAE frozen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cache_latents
import train_ldm_only
from data.h5 import H5Images, H5ImagesAndLatents, listing_path
from data.procedural import render_batch
from models.vae import VAE_models, to_ldm_state_dict
from preprocessing import dataset_tools

ROOT = Path(__file__).resolve().parent.parent
N = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """24 built-in images at 32 px in REPA-E's layout, and a tiny VAE (released format) with its statistics."""
    folder = tmp_path_factory.mktemp("data")
    dataset_tools.main(dataset_tools.parse_args(["convert", "--source", "builtin", "--max-images", str(N),
                                                 "--resolution", "32x32", "--dest", str(folder / "images.h5")]))
    torch.manual_seed(0)
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), folder / "tiny.pt")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.zeros(1, 4, 1, 1)},
               folder / "tiny-latents-stats.pt")
    return folder


def test_images_h5_has_repaes_layout_and_reads_back(data_dir):
    with h5py.File(data_dir / "images.h5", "r") as h5:
        entry = h5["00000/img00000003.png"]
        assert entry.dtype.kind == "S" and np.array(entry).tobytes()[:8] == b"\x89PNG\r\n\x1a\n"
        labels = json.loads(np.array(h5["dataset.json"]).tobytes().decode())["labels"]
    assert labels[3][0] == "00000/img00000003.png"
    names = json.loads((data_dir / "images_h5.json").read_text())
    assert "00000/img00000003.png" in names and "dataset.json" in names
    dataset = H5Images(data_dir)
    image, label = dataset[3]
    assert torch.equal(image, torch.from_numpy(render_batch(np.arange(N), 0, 32, 10)[3]).permute(2, 0, 1))
    assert label == labels[3][1] and len(dataset) == N


def test_an_unfinished_file_is_refused(tmp_path, data_dir):
    (tmp_path / "images.h5").write_bytes((data_dir / "images.h5").read_bytes())
    with pytest.raises(ValueError, match="no images_h5.json: it was not finished"):
        H5Images(tmp_path)


def cache(data_dir, out, name="tiny", *extra):
    return cache_latents.main(cache_latents.parse_args([
        "--vae-arch", "tiny-f4d4", "--vae-ckpt-path", str(data_dir / "tiny.pt"), "--vae-latents-name", name,
        "--data-dir", str(data_dir), "--output-dir", str(out), "--pproc-batch-size", "5", *extra]))


def test_cache_latents_stores_the_posterior_moments_and_resumes(data_dir, tmp_path):
    target = cache(data_dir, tmp_path)
    vae = VAE_models["tiny-f4d4"]()
    from models.vae import load_vae_weights

    load_vae_weights(vae, data_dir / "tiny.pt")
    image = H5Images(data_dir)[5][0].float()[None] / 127.5 - 1
    with torch.no_grad():
        posterior = vae.encode(image)
    with h5py.File(target, "r") as h5:
        stored = np.array(h5["00000/img-mean-std-00000005.npy"])
    torch.testing.assert_close(torch.from_numpy(stored), torch.cat([posterior.mean, posterior.std], 1)[0])

    # An interrupted run: a partial file with some entries (zeros here) is completed, not redone.
    target.rename(tmp_path / "full.h5")
    with h5py.File(tmp_path / "tiny.h5.partial", "w") as h5:
        for i in range(7):
            h5.require_group("00000").create_dataset(f"img-mean-std-{i:08d}.npy", data=np.zeros((8, 8, 8), np.float32))
    listing_path(target).unlink()
    cache(data_dir, tmp_path)
    with h5py.File(target, "r") as h5, h5py.File(tmp_path / "full.h5", "r") as full:
        assert not np.array(h5["00000/img-mean-std-00000003.npy"]).any()  # kept, not encoded again
        assert np.array_equal(np.array(h5["00000/img-mean-std-00000020.npy"]),
                              np.array(full["00000/img-mean-std-00000020.npy"]))
    assert not (tmp_path / "tiny.h5.partial").exists()


def test_cache_latents_over_two_processes_matches_one(data_dir, tmp_path):
    cache(data_dir, tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "cache_latents.py", "--vae-arch", "tiny-f4d4", "--vae-ckpt-path", str(data_dir / "tiny.pt"),
                           "--vae-latents-name", "tiny", "--data-dir", str(data_dir), "--output-dir",
                           str(tmp_path / "two"), "--pproc-batch-size", "5"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(tmp_path / "one" / "tiny.h5", "r") as a, h5py.File(tmp_path / "two" / "tiny.h5", "r") as b:
        for i in range(N):
            name = f"00000/img-mean-std-{i:08d}.npy"
            np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), atol=1e-6)


@pytest.fixture(scope="module")
def ldm_run(data_dir, quick_grids, tmp_path_factory):
    """train_ldm_only.py for 2 steps on the latents cache_latents.py wrote into ``data_dir``: its run folder."""
    cache(data_dir, data_dir)
    out = tmp_path_factory.mktemp("exps")
    train_ldm_only.main(train_ldm_only.parse_args([
        "--exp-name", "ldm", "--output-dir", str(out), "--data-dir", str(data_dir), "--num-classes", "10",
        "--resolution", "32", "--model", "SiT-Ti/1", "--vae", "tiny-f4d4", "--vae-ckpt", str(data_dir / "tiny.pt"),
        "--vae-latents-name", "tiny", "--enc-type", "tiny-vit", "--encoder-depth", "1", "--batch-size", "4",
        "--max-train-steps", "2", "--checkpointing-steps", "2", "--sampling-steps", "1000", "--no-compile",
        "--mixed-precision", "no", "--report-to", "none", "--num-workers", "0", "--log-every", "1"]))
    return out / "ldm"


def test_ldm_only_trains_the_sit_on_cached_latents_with_its_batchnorm_fixed(data_dir, ldm_run):
    assert len(H5ImagesAndLatents(data_dir, "tiny")) == N
    ckpt = torch.load(ldm_run / "checkpoints" / "0000002.pt", weights_only=False)
    assert {"model", "ema", "opt"} <= set(ckpt) and "vae" not in ckpt
    torch.testing.assert_close(ckpt["model"]["bn.running_var"], torch.full((4,), 0.25))  # the VAE's statistics
    assert ckpt["model"]["bn.num_batches_tracked"] == 0
    assert (ldm_run / "samples" / "0000002.png").is_file()


def test_pretrain_vae_writes_the_released_format_and_is_a_cache(data_dir, tmp_path, capsys):
    from preprocessing import pretrain_vae

    argv = ["--data-dir", str(data_dir), "--max-train-steps", "2", "--batch-size", "4", "--stats-images", "8",
            "--save-dir", str(tmp_path), "--vae-name", "v"]
    weights = pretrain_vae.main(pretrain_vae.parse_args(argv))
    assert "encoder.down.0.block.0.conv1.weight" in torch.load(weights)  # LDM names
    stats = torch.load(tmp_path / "v" / "v-latents-stats.pt")
    assert stats["latents_scale"].shape == (1, 4, 1, 1) and (stats["latents_scale"] > 0).all()
    before = weights.stat().st_mtime_ns
    pretrain_vae.main(pretrain_vae.parse_args(argv))
    assert "nothing to do" in capsys.readouterr().out and weights.stat().st_mtime_ns == before


def test_the_report_puts_runs_side_by_side(data_dir, ldm_run, tmp_path):
    from evaluations import repae_report

    report = repae_report.main(repae_report.parse_args([
        "--data-dir", str(data_dir), "--start-vae", str(data_dir / "tiny.pt"), "--vae-arch", "tiny-f4d4",
        "--run", f"frozen={ldm_run}", "--out", str(tmp_path / "report")]))
    lines = report.read_text().splitlines()
    assert lines[2].startswith("| start VAE | 0 |") and lines[3].startswith("| frozen | 2 |")
    start_l1, frozen_l1 = float(lines[2].split("|")[3]), float(lines[3].split("|")[3])
    assert start_l1 == frozen_l1  # a frozen VAE reconstructs as it started
    for name in ("reconstructions.png", "losses.png", "samples.png"):
        assert (tmp_path / "report" / name).is_file(), name


@pytest.mark.parametrize("flag, value, message", [
    ("--vae-ckpt-path", "missing.pt", "--vae-ckpt-path .*missing.pt: no such file"),
    ("--vae-arch", "f8d4", "does not fit this VAE.*other architecture"),
    ("--data-dir", "nowhere", "images.h5: no such file"),
])
def test_cache_latents_refuses_bad_input_in_one_line(data_dir, tmp_path, flag, value, message):
    argv = ["--vae-arch", "tiny-f4d4", "--vae-ckpt-path", str(data_dir / "tiny.pt"), "--vae-latents-name", "x",
            "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out")]
    argv[argv.index(flag) + 1] = str(tmp_path / value) if value in ("missing.pt", "nowhere") else value
    with pytest.raises(ValueError, match=message):
        cache_latents.main(cache_latents.parse_args(argv))
    assert not (tmp_path / "out").exists()
