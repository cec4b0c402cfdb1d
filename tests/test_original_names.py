"""The sampling scripts also write their ``.npz`` under the name the original script gives it, so the originals'
evaluation commands find it: official DiT's for ``sample_ddp.py``, REPA's and REG's for ``generate.py`` (REPA-E's
is checked in tests/test_train_repae.py, SiT's in tests/test_sit_mode.py); no path separator ever enters a name."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import generate
import sample_ddp
from evaluations.sampling_cli import original_npz_name
from models import create_model

FAST = ["--num-fid-samples", "2", "--per-proc-batch-size", "2"]


def save(path, model, name):
    torch.save({"ema": model.state_dict(), "args": {"model": name, "image_size": 8, "num_classes": 10, "vae": "none"}},
               path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    dit = save(root / "0000040.pt", create_model("DiT-Ti/4", input_size=8, in_channels=3, num_classes=10), "DiT-Ti/4")
    sit = save(root / "0000100.pt", create_model("SiT-Ti/2", input_size=8, in_channels=3, num_classes=10, z_dims=[8]),
               "SiT-Ti/2")
    reg = save(root / "0000200.pt", create_model("SiT-Ti/2", input_size=8, in_channels=3, num_classes=10, z_dims=[8],
                                                 cls_token_dim=8), "SiT-Ti/2")
    return {"dit": dit, "sit": sit, "reg": reg}


def test_sample_ddp_writes_dits_name(ckpts, tmp_path):
    npz = sample_ddp.main(sample_ddp.parse_args(["--ckpt", ckpts["dit"], "--num-sampling-steps", "2", *FAST,
                                                 "--sample-dir", str(tmp_path)]))
    dits = tmp_path / "DiT-Ti-4-0000040-size-8-vae-none-cfg-1.5-seed-0.npz"
    assert np.array_equal(np.load(dits)["arr_0"], np.load(npz)["arr_0"])


@pytest.mark.parametrize("key,flags,name", [
    ("sit", ["--mode", "ode"], "SiT-Ti-2-0000100-size-8-vae-none-cfg-1.5-seed-0-ode.npz"),
    ("reg", ["--mode", "sde", "--cfg-scale", "2.3", "--cls-cfg-scale", "2.3", "--guidance-high", "0.85"],
     "SiT-Ti-2-0000200-size-8-vae-none-cfg-2.3-seed-0-sde-0.85-2.3.npz"),
])
def test_generate_writes_repas_and_regs_names(ckpts, tmp_path, key, flags, name):
    npz = generate.main(generate.parse_args(["--ckpt", ckpts[key], "--num-steps", "2", *flags, *FAST,
                                             "--sample-dir", str(tmp_path)]))
    assert np.array_equal(np.load(tmp_path / name)["arr_0"], np.load(npz)["arr_0"])


def test_a_vae_folder_puts_no_separator_into_the_name():
    args = argparse.Namespace(ckpt="runs/a/0000040.pt", cfg_scale=1.5, global_seed=0, script="sample_ddp.py")
    cfg = {"ckpt": "runs/a/0000040.pt", "model": "DiT-XL/2", "image_size": 256, "vae": "/models/my-vae"}
    assert original_npz_name(args, cfg) == "DiT-XL-2-0000040-size-256-vae--models-my-vae-cfg-1.5-seed-0"
