"""Checkpoints written by earlier versions of train.py still load, sample the same and resume.

The fixtures were recorded by ``tests/fixtures/record_legacy_checkpoints.py`` with train.py at
commit c807080: a DiT-Ti/4 and a plain SiT-Ti/4, and what that commit sampled from them.
"""

import lzma
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_script

from diffusion.pipeline import generate
from models.pretrained import build_for_sampling, resolve_sampling_config
from models.vae import load_vae

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> dict:
    """The legacy checkpoints, unpacked, and the samples recorded from them."""
    out = tmp_path_factory.mktemp("legacy")
    paths = {}
    for name in ("dit", "sit"):
        paths[name] = out / f"legacy_{name}_ti4.pt"
        with lzma.open(FIXTURES / f"legacy_{name}_ti4.pt.xz") as src, open(paths[name], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return {"paths": paths, "record": torch.load(FIXTURES / "legacy_samples.pt", weights_only=False)}


@pytest.mark.parametrize("name", ["dit", "sit"])
def test_legacy_checkpoint_samples_as_recorded(legacy, name):
    args = SimpleNamespace(ckpt=str(legacy["paths"][name]), model=None, image_size=None, num_classes=None, vae=None,
                           default_vae="none", path_type=None, encoder_depth=None, projector_embed_dims=None,
                           cls=None, legacy=False)
    state_dict, cfg = resolve_sampling_config(args)
    model = build_for_sampling(state_dict, cfg, load_vae(cfg["vae"], "cpu"), "cpu")
    rec = legacy["record"][name]
    extra = {"noise_schedule": cfg["noise_schedule"]} if name == "dit" else {"path_type": cfg["path_type"]}
    torch.manual_seed(1)
    with torch.no_grad():
        out = generate(model, rec["noise"], rec["labels"], num_classes=10, **rec["sampling"], **extra)
    torch.testing.assert_close(out, rec["samples"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit", "sit"])
def test_legacy_checkpoint_resumes(legacy, name, tmp_path):
    """``--resume`` with a legacy checkpoint file continues its run from step 2 in a new run folder."""
    old = torch.load(legacy["paths"][name], weights_only=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in old["args"].items()
             if k in ("model", "image_size", "num_classes", "vae", "dataset", "global_batch_size", "lr")]
    if name == "sit":
        flags += ["--proj-coeff", "0", "--cls", "0"]
    proc = run_script("train.py", *flags, "--num-workers", "0", "--max-steps", "3", "--log-every", "1",
                      "--resume", str(legacy["paths"][name]), "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "r").glob("*/checkpoints/0000003.pt")
    new = torch.load(ckpt, weights_only=False)
    assert new["steps"] == 3
    assert not torch.equal(new["model"]["final_layer.linear.weight"], old["model"]["final_layer.linear.weight"])
