"""sample.py and sample_ddp.py on a checkpoint of train.py (CPU; sample_ddp through two gloo processes)."""

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from diffusion.pipeline import generate
from models import create_model


def test_sample_writes_a_grid_from_our_checkpoint(trained_run, tmp_path):
    out = tmp_path / "grid.png"
    proc = run_script("sample.py", "--ckpt", str(trained_run / "checkpoints" / "0000020.pt"),
                      "--num-sampling-steps", "10", "--class-labels", "0", "1", "2", "3", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    # One row of four 16x16 images with 2 px borders, enlarged 8x, the least that makes it 512 px wide.
    assert grid.shape == (2 + 128 + 2, 4 * 130 + 2, 3)
    first = grid[2:130, 2:130].reshape(16, 8, 16, 8, 3)
    assert (first == first[:, :1, :, :1]).all()  # nearest neighbour: every source pixel an 8x8 square


@pytest.mark.slow
def test_sample_ddim(trained_run, tmp_path):
    out = tmp_path / "ddim.png"
    proc = run_script("sample.py", "--ckpt", str(trained_run / "checkpoints" / "0000020.pt"),
                      "--sampler", "ddim", "--num-sampling-steps", "5", "--cfg-scale", "1.0", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()


@pytest.mark.multiprocess
def test_sample_ddp_two_gloo_processes_write_exactly_n_and_resume(trained_run, tmp_path):
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "sample_ddp.py",
            "--ckpt", str(trained_run / "checkpoints" / "0000020.pt"), "--num-fid-samples", "10",
            "--per-proc-batch-size", "3", "--num-sampling-steps", "4", "--sample-dir", str(tmp_path)]
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 process(es))" in proc.stdout  # one process group of two, not two single processes
    (npz_path,) = [p for p in tmp_path.glob("*.npz") if p.with_suffix("").is_dir()]  # beside its PNG folder
    (dits,) = [p for p in tmp_path.glob("*.npz") if p != npz_path]  # the copy under official DiT's name
    assert dits.name == "DiT-Ti-4-0000020-size-16-vae-none-cfg-1.5-seed-0.npz"
    data = np.load(npz_path)
    assert np.array_equal(np.load(dits)["arr_0"], data["arr_0"])
    assert data["arr_0"].shape == (10, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].shape == (10,) and data["arr_1"].max() < 10
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert npz_path.name == folder.name + ".npz"
    assert len(list(folder.glob("*.png"))) == 12  # two batches of 2 x 3, the .npz keeps the first 10
    # Ranks draw distinct noise: no two images are identical.
    flat = data["arr_0"].reshape(10, -1)
    assert len({row.tobytes() for row in flat}) == 10
    # An interrupted run resumes by skipping what is written: delete one batch and re-run.
    first = np.asarray(Image.open(folder / "000007.png")).copy()
    for i in range(6, 12):
        (folder / f"{i:06d}.png").unlink()
    stamp = (folder / "000000.png").stat().st_mtime_ns
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (folder / "000000.png").stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(Image.open(folder / "000007.png")), first)


class HugeEps(torch.nn.Module):
    """A DiT stand-in whose eps prediction is far off: unclipped x0 estimates explode."""

    prediction = "eps"

    def forward(self, x, t, y):
        return torch.cat([torch.full_like(x, 50.0), torch.zeros_like(x)], dim=1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_pixel_space_sampling_clips_x0_and_latent_sampling_does_not(sampler):
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, dtype=torch.long)
    kw = dict(sampler=sampler, num_steps=5, noise_schedule="squaredcos_cap_v2")
    clipped = generate(HugeEps(), noise, labels, clip_denoised=True, **kw)
    assert clipped.abs().max() <= 1.0 + 1e-6
    assert generate(HugeEps(), noise, labels, clip_denoised=False, **kw).abs().max() > 10


def test_samplers_use_the_noise_schedule_the_run_trained_with(tmp_path):
    import argparse

    from models.pretrained import resolve_sampling_config

    ckpt = tmp_path / "c.pt"
    weights = create_model("DiT-Ti/4", input_size=16, num_classes=10, in_channels=3).state_dict()
    torch.save({"ema": weights, "args": {"model": "DiT-Ti/4", "image_size": 16, "num_classes": 10, "vae": "none",
                                         "noise_schedule": "cosine"}}, ckpt)
    args = argparse.Namespace(ckpt=str(ckpt), model=None, image_size=None, num_classes=None, vae=None,
                              default_vae="ema")
    _, cfg = resolve_sampling_config(args)
    assert cfg["noise_schedule"] == "squaredcos_cap_v2" and cfg["vae"] == "none"
    del args.ckpt
    torch.save({"ema": weights, "args": {"model": "DiT-Ti/4", "image_size": 16}}, ckpt)  # runs before the flag
    _, cfg = resolve_sampling_config(argparse.Namespace(ckpt=str(ckpt), model=None, image_size=None,
                                                        num_classes=None, vae=None, default_vae="ema"))
    assert cfg["noise_schedule"] == "linear"


def test_guidance_without_a_null_class_is_refused():
    model = create_model("DiT-Ti/4", input_size=16, num_classes=10, in_channels=3, class_dropout_prob=0.0).eval()
    noise, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="--cfg-prob 0.*--cfg-scale 1"):
        generate(model, noise, labels, sampler="ddim", num_steps=2, cfg_scale=4.0, num_classes=10)
    assert generate(model, noise, labels, sampler="ddim", num_steps=2, cfg_scale=1.0, num_classes=10).shape == noise.shape
