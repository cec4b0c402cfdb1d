"""REPA-E's data path: images.h5 written by the converter, cache_latents.py (resumable, distributed) and
train_ldm_only.py on the cached latents with the VAE frozen."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cache_latents
import train_ldm_only
from imagedata.h5 import H5Images, H5ImagesAndLatents, listing_path
from imagedata.procedural import render_batch
from models.vae import VAE_models, to_ldm_state_dict
from models.weights import sha256_of
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
        h5.attrs.update(vae_arch="tiny-f4d4", vae_ckpt_sha256=sha256_of(data_dir / "tiny.pt"))
        for i in range(7):
            h5.require_group("00000").create_dataset(f"img-mean-std-{i:08d}.npy", data=np.zeros((8, 8, 8), np.float32))
    listing_path(target).unlink()
    cache(data_dir, tmp_path)
    with h5py.File(target, "r") as h5, h5py.File(tmp_path / "full.h5", "r") as full:
        assert not np.array(h5["00000/img-mean-std-00000003.npy"]).any()  # kept, not encoded again
        assert np.array_equal(np.array(h5["00000/img-mean-std-00000020.npy"]),
                              np.array(full["00000/img-mean-std-00000020.npy"]))
    assert not (tmp_path / "tiny.h5.partial").exists()


def test_cache_latents_refuses_to_resume_or_keep_latents_of_another_vae(data_dir, tmp_path):
    target = cache(data_dir, tmp_path)
    with h5py.File(target, "r") as h5:
        assert h5.attrs["vae_arch"] == "tiny-f4d4" and h5.attrs["vae_ckpt_sha256"] == sha256_of(data_dir / "tiny.pt")
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), other)
    argv = ["--vae-arch", "tiny-f4d4", "--vae-ckpt-path", str(other), "--vae-latents-name", "tiny", "--data-dir",
            str(data_dir), "--output-dir", str(tmp_path), "--pproc-batch-size", "5"]
    kept = target.read_bytes()
    with pytest.raises(ValueError, match=f"{target} holds latents of another VAE \\(vae_ckpt_sha256 "
                                         f"{sha256_of(data_dir / 'tiny.pt')}, not {sha256_of(other)} of "
                                         "--vae-ckpt-path\\); pass another --vae-latents-name, or delete it"):
        cache_latents.main(cache_latents.parse_args(argv))
    assert target.read_bytes() == kept

    partial = target.with_name("tiny.h5.partial")  # an interrupted run of the first VAE
    target.rename(partial)
    listing_path(target).unlink()
    with pytest.raises(ValueError, match="tiny.h5.partial holds latents of another VAE"):
        cache_latents.main(cache_latents.parse_args(argv))
    with h5py.File(partial, "a") as h5:
        h5.attrs["vae_arch"] = "f8d4"
    with pytest.raises(ValueError, match="another VAE \\(vae_arch f8d4, not tiny-f4d4 of --vae-arch\\)"):
        cache(data_dir, tmp_path)
    with h5py.File(partial, "a") as h5:
        h5.attrs.clear()
    with pytest.raises(ValueError, match="tiny.h5.partial does not record the VAE it was cached with; delete it"):
        cache(data_dir, tmp_path)
    assert partial.is_file() and not target.exists()


@pytest.mark.multiprocess
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


GAN_CONFIG = """model:
    vq_model:
        quantize_mode: vae
losses:
    discriminator_start: 1
    discriminator_weight: 0.1
    perceptual_weight: 0.0
"""


def test_pretrain_vae_with_a_gan_loss_trains_and_hands_on_the_discriminator(data_dir, tmp_path, capsys):
    """A loss YAML with a GAN weight trains the discriminator too (from discriminator_start), saved where
    save_vae_weights.py puts REPA-E's and in the form --disc-pretrained-ckpt loads; the cache waits for all three."""
    from models.discriminator import NLayerDiscriminator
    from preprocessing import pretrain_vae

    (tmp_path / "gan.yaml").write_text(GAN_CONFIG)
    argv = ["--data-dir", str(data_dir), "--max-train-steps", "3", "--batch-size", "4", "--stats-images", "8",
            "--save-dir", str(tmp_path), "--vae-name", "v", "--loss-cfg-path", str(tmp_path / "gan.yaml")]
    pretrain_vae.main(pretrain_vae.parse_args(argv))
    disc_file = tmp_path / "v" / "v-discriminator-ckpt.pt"
    fresh = NLayerDiscriminator()
    trained = torch.load(disc_file, weights_only=True)
    fresh.load_state_dict(trained)  # what train_repae.py --disc-pretrained-ckpt does, strictly
    tracked = [v.item() for k, v in trained.items() if k.endswith("num_batches_tracked")]
    assert tracked and min(tracked) >= 3  # it ran in training mode at every step
    records = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert all("d_loss" in r for r in records)
    disc_file.unlink()
    before = (tmp_path / "v" / "v.pt").stat().st_mtime_ns
    pretrain_vae.main(pretrain_vae.parse_args(argv))  # the discriminator is missing: trained again
    assert disc_file.is_file() and (tmp_path / "v" / "v.pt").stat().st_mtime_ns != before
    assert "nothing to do" not in capsys.readouterr().out


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


def test_the_report_reconstructs_with_each_frozen_runs_own_vae(data_dir, ldm_run, tmp_path):
    """A train_ldm_only.py run on another VAE than the start (REPA-E's drop-in test) is read with its --vae-ckpt."""
    from evaluations import repae_report

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), other)
    report = repae_report.main(repae_report.parse_args([
        "--data-dir", str(data_dir), "--start-vae", str(other), "--vae-arch", "tiny-f4d4",
        "--run", f"drop-in={ldm_run}", "--out", str(tmp_path / "report")]))
    lines = report.read_text().splitlines()
    start_l1, run_l1 = float(lines[2].split("|")[3]), float(lines[3].split("|")[3])
    images = torch.stack([torch.from_numpy(H5Images(data_dir).image(i).copy()) for i in range(N)]).float() / 127.5 - 1
    assert start_l1 != run_l1
    assert run_l1 == pytest.approx((repae_report.reconstruct(str(data_dir / "tiny.pt"), "tiny-f4d4", images)
                                    - images).abs().mean().item(), abs=1e-4)


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


def copy_of(data_dir, folder, latents=True):
    """``data_dir``'s images, VAE and (cached with that VAE) latents in ``folder``."""
    folder.mkdir()
    for name in ("images.h5", "images_h5.json", "tiny.pt", "tiny-latents-stats.pt"):
        shutil.copy(data_dir / name, folder / name)
    if latents:
        cache(folder, folder)
    return folder


def test_h5_errors_name_the_file_and_the_entry(data_dir, tmp_path):
    folder = copy_of(data_dir, tmp_path / "d")
    images, latents = folder / "images.h5", folder / "tiny.h5"
    with h5py.File(images, "a") as h5:  # an entry in the middle that is no PNG: found when it is read
        del h5["00000/img00000002.png"]
        h5["00000"].create_dataset("img00000002.png", data=np.array(b"garbage", dtype="S"))
    dataset = H5ImagesAndLatents(folder, "tiny")
    with pytest.raises(ValueError, match=f"{images}: entry 00000/img00000002.png is not a readable image"):
        dataset[2]
    dataset.close()
    with h5py.File(latents, "a") as h5:
        del h5["00000/img-mean-std-00000005.npy"]
        h5["00000"].create_dataset("img-mean-std-00000005.npy", data=np.array(b"x", dtype="S"))
    dataset = H5ImagesAndLatents(folder, "tiny")
    with pytest.raises(ValueError, match=f"{latents}: entry 00000/img-mean-std-00000005.npy cannot be read as "
                                         "latents"):
        dataset[5]
    dataset.close()
    with h5py.File(latents, "a") as h5:  # listed but gone: found when the file is opened
        del h5["00000/img-mean-std-00000007.npy"]
    with pytest.raises(ValueError, match=f"{latents}: 1 of the 24 entries tiny_h5.json lists are missing "
                                         "\\(first 00000/img-mean-std-00000007.npy\\)"):
        H5ImagesAndLatents(folder, "tiny")
    with h5py.File(images, "a") as h5:
        del h5["00000/img00000023.png"]
    with pytest.raises(ValueError, match="images.h5: 1 of the 24 entries images_h5.json lists are missing "
                                         "\\(first 00000/img00000023.png\\)"):
        H5Images(folder)
    images.write_bytes((data_dir / "images.h5").read_bytes()[:-300])
    with pytest.raises(ValueError, match=f"{images} cannot be read as HDF5 .*truncated"):
        H5Images(folder)


def test_missing_latents_say_how_cache_latents_writes_them(data_dir, tmp_path):
    folder = copy_of(data_dir, tmp_path / "d", latents=False)
    how = (f"write it: cache_latents.py --vae-arch ARCH --vae-ckpt-path VAE.pt --vae-latents-name nope --data-dir "
           f"{folder} --output-dir {folder}")
    with pytest.raises(ValueError, match=f"nope.h5: no such file; {how}"):
        H5ImagesAndLatents(folder, "nope")
    (folder / "nope.h5.partial").write_bytes(b"")
    with pytest.raises(ValueError, match="nope.h5: no such file, only the unfinished nope.h5.partial; finish it: "
                                         "cache_latents.py"):
        H5ImagesAndLatents(folder, "nope")
    assert "dataset_tools" in str(pytest.raises(ValueError, H5Images, tmp_path).value)


def ldm_only(folder, out, vae="tiny.pt"):
    train_ldm_only.main(train_ldm_only.parse_args([
        "--exp-name", "ldm", "--output-dir", str(out), "--data-dir", str(folder), "--num-classes", "10",
        "--resolution", "32", "--model", "SiT-Ti/1", "--vae", "tiny-f4d4", "--vae-ckpt", str(folder / vae),
        "--vae-latents-name", "tiny", "--enc-type", "tiny-vit", "--encoder-depth", "1", "--batch-size", "4",
        "--max-train-steps", "2", "--no-compile", "--mixed-precision", "no", "--report-to", "none",
        "--num-workers", "0"]))


def test_a_bad_h5_or_latents_of_another_vae_stop_the_start_before_a_run_folder(data_dir, tmp_path):
    folder = copy_of(data_dir, tmp_path / "d")
    torch.manual_seed(1)
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), folder / "other.pt")
    shutil.copy(folder / "tiny-latents-stats.pt", folder / "other-latents-stats.pt")
    with pytest.raises(ValueError, match="tiny.h5 holds latents of another VAE than --vae-ckpt .*other.pt"):
        ldm_only(folder, tmp_path / "exps", vae="other.pt")
    with h5py.File(folder / "tiny.h5", "a") as h5:
        del h5["00000/img-mean-std-00000011.npy"]
    with pytest.raises(ValueError, match="tiny.h5: 1 of the 24 entries"):
        ldm_only(folder, tmp_path / "exps")
    (folder / "images.h5").write_bytes((data_dir / "images.h5").read_bytes()[:1000])
    with pytest.raises(ValueError, match="images.h5 cannot be read as HDF5"):
        ldm_only(folder, tmp_path / "exps")
    assert not (tmp_path / "exps" / "ldm").exists()
