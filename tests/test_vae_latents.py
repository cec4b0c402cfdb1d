"""The VAE codec, the latent cache and the scripts that use them, on a tiny random diffusers AutoencoderKL.

The tiny VAE has four resolution levels (downsampling 8) and 4 latent channels, like the SD VAE,
so 32 px images become 4 x 4 x 4 latents.
"""

import json

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

import train
from imagedata import resolve_dataset_kind
from imagedata.latents import LatentDataset, sample_latents
from imagedata.procedural import ProceduralImages, label_of
from models.vae import load_vae

OFFLINE = {"HF_HUB_OFFLINE": "1"}
N_IMAGES = 24


@pytest.fixture(scope="module")
def latent_cache(tiny_vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "cache"
    proc = run_script("preprocessing/encode_latents.py", "--dataset", "builtin", "--num-images", str(N_IMAGES),
                      "--image-size", "32", "--num-classes", "10", "--vae", str(tiny_vae), "--output", str(out),
                      "--batch-size", "8", "--num-workers", "0", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cached_run(latent_cache, tiny_vae, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_script("train.py", "--data-path", str(latent_cache), "--model", "DiT-Ti/2", "--image-size", "32",
                      "--num-classes", "10", "--vae", str(tiny_vae), "--global-batch-size", "8", "--num-workers", "0",
                      "--max-steps", "4", "--log-every", "2", "--ckpt-every", "4", "--results-dir", str(results),
                      env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list(results.iterdir())
    return run_dir


def test_load_vae_folder_encodes_to_scaled_latents_and_decodes(tiny_vae):
    from diffusers import AutoencoderKL

    codec = load_vae(str(tiny_vae))
    assert codec.downsample == 8 and codec.latent_channels == 4 and codec.scale == 0.18215
    reference = AutoencoderKL.from_pretrained(tiny_vae).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected_mean = reference.encode(x).latent_dist.mean * 0.18215
        mean, std = codec.moments(x)
        assert mean.shape == std.shape == (2, 4, 4, 4)
        torch.testing.assert_close(mean * 0.18215, expected_mean)
        # encode = a posterior sample times the scale: same noise, same latent.
        torch.manual_seed(1)
        z = codec.encode(x)
        torch.manual_seed(1)
        torch.testing.assert_close(z, (mean + std * torch.randn(mean.shape)) * 0.18215)
        image = codec.decode(z)
        assert image.shape == (2, 3, 32, 32)
        torch.testing.assert_close(image, reference.decode(z / 0.18215).sample)


def test_load_vae_none_is_the_identity():
    codec = load_vae("none")
    x = torch.randn(2, 3, 8, 8)
    assert codec.downsample == 1 and codec.latent_channels == 3
    assert codec.encode(x) is x and codec.decode(x) is x


def test_uncached_hub_vae_offline_names_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        load_vae("nobody-here/no-such-vae")
    message = str(info.value)
    assert "\n" not in message
    assert "hf download nobody-here/no-such-vae" in message and "--vae vae/no-such-vae" in message


def test_bad_vae_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_vae(str(tmp_path))  # exists, but holds no diffusers config
    with pytest.raises(ValueError, match="no such folder"):
        load_vae(str(tmp_path / "missing" / "vae"))


@pytest.mark.slow
def test_encode_latents_writes_moments_of_images_and_flips(latent_cache, tiny_vae):
    manifest = json.loads((latent_cache / "latents.json").read_text())
    assert manifest["count"] == N_IMAGES and manifest["vae"] == str(tiny_vae)
    assert manifest["latent_shape"] == [4, 4, 4] and manifest["image_size"] == 32
    moments = np.load(latent_cache / "moments.npy")
    assert moments.shape == (N_IMAGES, 2, 8, 4, 4) and moments.dtype == np.float16
    labels = np.load(latent_cache / "labels.npy")
    assert labels.tolist() == [label_of(i, 10) for i in range(N_IMAGES)]

    # The cache holds q(z|x) of each built-in image (index 0) and of its mirror image (index 1).
    codec = load_vae(str(tiny_vae))
    builtin = ProceduralImages(N_IMAGES, resolution=32, num_classes=10)  # train.py's set, seed 0
    images = torch.stack([builtin[i][0] for i in range(N_IMAGES)])
    for index, x in ((0, images), (1, images.flip(-1))):
        mean, std = codec.moments(x)
        expected = torch.cat([mean, std], dim=1).numpy()
        np.testing.assert_allclose(moments[:, index].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(moments[:, 0], moments[:, 1])  # the procedural images are not symmetric

    dataset = LatentDataset(latent_cache)
    assert len(dataset) == N_IMAGES and dataset.latent_shape == (4, 4, 4) and dataset.vae == str(tiny_vae)
    item, label = dataset[3]
    assert item.dtype == torch.float32 and item.shape == (2, 8, 4, 4) and label == 3


def test_cached_latents_are_scaled_posterior_samples_of_the_chosen_view():
    moments = torch.zeros(2, 2, 8, 4, 4)
    moments[:, 0, :4], moments[:, 1, :4] = 1.0, -1.0  # means: +1 unflipped, -1 flipped; std 0
    z = sample_latents(moments, torch.tensor([False, True]), 0.5)
    assert torch.equal(z[0], torch.full((4, 4, 4), 0.5)) and torch.equal(z[1], torch.full((4, 4, 4), -0.5))
    # train.py draws the flips on the CPU; the moments may be on an accelerator (meta stands in for it here).
    assert sample_latents(moments.to("meta"), torch.tensor([False, True]), 0.5).device.type == "meta"


def test_interrupted_cache_is_refused(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()  # what an interrupted encode_latents.py leaves: its arrays, no latents.json
    np.save(partial / "moments.npy", np.zeros((N_IMAGES, 2, 8, 4, 4), np.float16))
    np.save(partial / "labels.npy", np.zeros(N_IMAGES, np.int64))
    with pytest.raises(ValueError, match="incomplete latent cache .*re-run preprocessing/encode_latents.py"):
        LatentDataset(partial)
    assert resolve_dataset_kind(None, str(partial)) == "latents"  # so train.py shows that message too


@pytest.mark.slow
def test_train_on_cached_latents_writes_checkpoint_and_decoded_grid(cached_run, tiny_vae):
    ckpt = torch.load(cached_run / "checkpoints" / "0000004.pt", weights_only=False)
    assert ckpt["steps"] == 4 and ckpt["args"]["vae"] == str(tiny_vae)
    assert ckpt["model"]["x_embedder.proj.weight"].shape[1] == 4  # 4 latent channels in
    grid = np.asarray(Image.open(cached_run / "samples" / "0000004.png"))
    # One row per class of four 32 px samples decoded by the VAE, enlarged 4x, class names on the left.
    assert grid.shape[0] == 2 + 10 * (4 * 32 + 2) and grid.shape[1] >= 4 * (4 * 32 + 2) + 2


@pytest.mark.slow
def test_train_with_vae_none_on_a_latent_cache_fails_in_one_line(latent_cache, tmp_path):
    proc = run_script("train.py", "--data-path", str(latent_cache), "--model", "DiT-Ti/2", "--image-size", "32",
                      "--num-classes", "10", "--vae", "none", "--global-batch-size", "8", "--num-workers", "0",
                      "--max-steps", "1", "--results-dir", str(tmp_path), env=OFFLINE)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "--vae" in line and "none" in line


def test_train_on_images_through_the_tiny_vae(tiny_vae, tmp_path):
    train.main(train.parse_args(["--dataset", "builtin", "--model", "DiT-Ti/2", "--image-size", "32",
                                 "--num-classes", "10", "--vae", str(tiny_vae), "--global-batch-size", "8",
                                 "--num-workers", "0", "--max-steps", "2", "--log-every", "1", "--ckpt-every", "2",
                                 "--results-dir", str(tmp_path)]))
    (run_dir,) = list(tmp_path.iterdir())
    ckpt = torch.load(run_dir / "checkpoints" / "0000002.pt", weights_only=False)
    assert ckpt["steps"] == 2 and ckpt["model"]["x_embedder.proj.weight"].shape[1] == 4
    assert all(np.isfinite(json.loads(line)["loss"]) for line in (run_dir / "metrics.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_sample_decodes_through_the_checkpoints_vae(cached_run, tmp_path):
    out = tmp_path / "s.png"
    proc = run_script("sample.py", "--ckpt", str(cached_run / "checkpoints" / "0000004.pt"),
                      "--num-sampling-steps", "3", "--output", str(out), env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 + 3 * 130, 2 + 4 * 130, 3)  # ten classes of 32 px images, four to a row, enlarged 4x
