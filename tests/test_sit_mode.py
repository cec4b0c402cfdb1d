"""SiT's command line pasted: ``sample.py ODE|SDE`` and ``sample_ddp.py ODE|SDE`` parse SiT's flags with SiT's
defaults, sample any checkpoint with SiT's samplers, write SiT's ``.npz`` name and the log-likelihoods, and refuse
in one line what they cannot do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sample
import sample_ddp
from models import create_model


@pytest.fixture(scope="module")
def sit_ckpt(tmp_path_factory):
    """A checkpoint of SiT's train.py layout: EMA weights and its flags (``--path-type Linear``: SiT's time)."""
    torch.manual_seed(0)
    model = create_model("SiT-Ti/2", input_size=8, in_channels=3, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("sit") / "0000100.pt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(),
                "args": {"model": "SiT-Ti/2", "image_size": 8, "num_classes": 10, "vae": "none",
                         "path_type": "Linear", "prediction": "velocity"}}, path)
    return path


TINY = ["--model", "SiT-Ti/2", "--image-size", "8", "--num-classes", "10", "--vae", "none"]


def test_sits_readme_commands_parse_with_sits_defaults():
    args = sample.parse_args(["ODE", "--image-size", "256", "--seed", "1"])
    assert (args.mode, args.model, args.vae, args.cfg_scale, args.num_sampling_steps, args.seed) == \
        ("ODE", "SiT-XL/2", "mse", 4.0, 250, 1)
    assert (args.sampling_method, args.atol, args.rtol, args.reverse, args.path_type) == \
        ("dopri5", 1e-6, 1e-3, False, "Linear")
    args = sample_ddp.parse_args(["SDE", "--model", "SiT-XL/2", "--num-fid-samples", "50000", "--last-step", "None"])
    assert (args.vae, args.cfg_scale, args.per_proc_batch_size, args.sampling_method, args.diffusion_form) == \
        ("ema", 1.0, 4, "Euler", "sigma")
    assert args.last_step is None and args.last_step_size == 0.04 and args.global_seed == 0 and args.tf32
    assert sample.parse_args(["--ckpt", "x.pt"]).mode is None  # without a mode: this repository's flags


def test_sample_ode_writes_the_grid_and_the_likelihood(sit_ckpt, tmp_path):
    out = tmp_path / "sample.png"
    sample.main(sample.parse_args(["ODE", "--ckpt", str(sit_ckpt), *TINY, "--num-sampling-steps", "3",
                                   "--sampling-method", "euler", "--cfg-scale", "1", "--likelihood",
                                   "--output", str(out)]))
    assert out.is_file()
    record = json.loads((tmp_path / "sample-likelihood.json").read_text())
    assert record["classes"] == list(range(10)) and record["dims"] == 3 * 8 * 8
    assert len(record["logp_nats"]) == 10 and all(np.isfinite(record["bits_per_dim"]))


@pytest.mark.parametrize("mode,flags,name", [
    ("SDE", ["--num-sampling-steps", "4"], "SiT-Ti-2-0000100-cfg-1.0-2-SDE-4-Euler-sigma-Mean-0.04.npz"),
    ("ODE", ["--num-sampling-steps", "3", "--sampling-method", "rk4", "--cfg-scale", "2.0"],
     "SiT-Ti-2-0000100-cfg-2.0-2-ODE-3-rk4.npz"),
])
def test_sample_ddp_writes_sits_npz_name(sit_ckpt, tmp_path, mode, flags, name):
    npz = sample_ddp.main(sample_ddp.parse_args([mode, "--ckpt", str(sit_ckpt), *TINY, *flags, "--per-proc-batch-size",
                                                 "2", "--num-fid-samples", "3", "--sample-dir", str(tmp_path)]))
    ours, sits = np.load(npz), np.load(tmp_path / name)
    assert ours["arr_0"].shape == (3, 8, 8, 3) and np.array_equal(ours["arr_0"], sits["arr_0"])
    assert "/" not in name


def test_sample_ddp_likelihood_is_written_per_image(sit_ckpt, tmp_path):
    npz = sample_ddp.main(sample_ddp.parse_args(["ODE", "--ckpt", str(sit_ckpt), *TINY, "--num-sampling-steps", "3",
                                                 "--sampling-method", "euler", "--likelihood", "--per-proc-batch-size",
                                                 "2", "--num-fid-samples", "3", "--sample-dir", str(tmp_path)]))
    record = np.load(npz.with_name(npz.stem + "-likelihood.npz"))
    assert record["logp"].shape == (3,) and np.isfinite(record["bits_per_dim"]).all() and int(record["dims"]) == 192


@pytest.mark.parametrize("flags,needle", [
    (["--prediction", "noise"], "leave out --prediction"),
    (["--path-type", "GVP"], "trained on the Linear path"),
    (["--path-type", "VP"], "trained on the Linear path"),
    (["--likelihood", "--cfg-scale", "4"], "--cfg-scale 1"),
    (["--sampling-method", "dopri9"], "torchdiffeq's solvers"),
])
def test_what_sits_samplers_cannot_do_is_refused_in_one_line(sit_ckpt, tmp_path, flags, needle):
    args = sample.parse_args(["ODE", "--ckpt", str(sit_ckpt), *TINY, "--num-sampling-steps", "3",
                              "--output", str(tmp_path / "s.png"), *flags])
    with pytest.raises(ValueError, match=needle) as error:
        sample.main(args)
    assert "\n" not in str(error.value)
