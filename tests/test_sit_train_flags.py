"""SiT's train.py command line: its transport flags (--path-type Linear|GVP|VP, --prediction velocity|score|noise,
--loss-weight, --train-eps, --sample-eps) train with SiT's own loss in SiT's time, the checkpoint records the
transport, and every sampler reads it as SiT's samplers do; --ckpt starts from a checkpoint's weights, --wandb,
--sample-every and --cfg-scale do what they do in SiT."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TRAIN

import sample
import train
from common.checkpoint import load_checkpoint

SIT = [*TINY_TRAIN[: TINY_TRAIN.index("--model")], "--model", "SiT-Ti/4",
       *TINY_TRAIN[TINY_TRAIN.index("--model") + 2:], "--max-steps", "2", "--ckpt-every", "2", "--log-every", "1"]


def run(tmp_path, *flags) -> dict:
    train.main(train.parse_args([*SIT, "--results-dir", str(tmp_path), *flags]))
    return load_checkpoint(tmp_path / "000-SiT-Ti-4" / "checkpoints" / "0000002.pt")


@pytest.mark.parametrize("path,prediction,weight", [("Linear", "velocity", None), ("GVP", "score", "velocity"),
                                                    ("VP", "noise", "likelihood")])
def test_sits_transports_train_record_and_sample(tmp_path, path, prediction, weight):
    flags = ["--path-type", path, "--prediction", prediction] + (["--loss-weight", weight] if weight else [])
    ckpt = run(tmp_path / "run", *flags)
    transport = ckpt["sampling_record"]["transport"]
    assert (transport["path_type"], transport["prediction"], transport["loss_weight"]) == (path, prediction, weight)
    assert ckpt["model_kwargs"]["time_convention"] == "sit"
    assert (tmp_path / "run" / "000-SiT-Ti-4" / "samples" / "0000002.png").is_file()  # the grid, SiT's samplers
    path_ckpt = str(tmp_path / "run" / "000-SiT-Ti-4" / "checkpoints" / "0000002.pt")
    for argv in (["--ckpt", path_ckpt, "--sampler", "sde", "--num-sampling-steps", "3"],
                 ["ODE", "--ckpt", path_ckpt, "--model", "SiT-Ti/4", "--image-size", "16", "--num-classes", "10",
                  "--vae", "none", "--num-sampling-steps", "3", "--sampling-method", "euler", *flags]):
        out = tmp_path / f"{argv[0]}.png"
        sample.main(sample.parse_args([*argv, "--output", str(out)]))
        assert out.is_file()
    if path != "Linear":  # SiT's mode with flags that are not the checkpoint's: refused, as SiT would misread it
        with pytest.raises(ValueError, match=f"was trained with --path-type {path}"):
            sample.main(sample.parse_args(["ODE", "--ckpt", path_ckpt, "--model", "SiT-Ti/4", "--image-size", "16",
                                           "--num-classes", "10", "--vae", "none"]))


def test_ckpt_starts_a_fresh_run_from_the_weights(tmp_path):
    first = run(tmp_path / "a", "--path-type", "Linear")
    source = tmp_path / "a" / "000-SiT-Ti-4" / "checkpoints" / "0000002.pt"
    train.main(train.parse_args([*SIT, "--results-dir", str(tmp_path / "b"), "--path-type", "Linear", "--ckpt",
                                 str(source), "--max-steps", "1", "--ckpt-every", "1"]))
    log = (tmp_path / "b" / "000-SiT-Ti-4" / "log.txt").read_text()
    assert f"started from the weights, EMAs and optimizer states of {source}" in log and "from step 0" in log
    second = load_checkpoint(tmp_path / "b" / "000-SiT-Ti-4" / "checkpoints" / "0000001.pt")
    assert second["steps"] == 1
    # one step of EMA 0.9999 from the first run's EMA: still that EMA to four digits, not a fresh copy of the model
    key = "final_layer.linear.weight"
    torch.testing.assert_close(second["ema"][key], first["ema"][key], atol=1e-3, rtol=0)


def test_a_ckpt_of_another_network_is_refused_before_the_run_folder(tmp_path):
    dit = tmp_path / "dit.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "ema": {}, "args": {}}, dit)
    with pytest.raises(ValueError, match="do not fit this run's network") as error:
        train.main(train.parse_args([*SIT, "--results-dir", str(tmp_path / "out"), "--ckpt", str(dit)]))
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "000-SiT-Ti-4").exists()


def test_sample_every_and_wandb(tmp_path):
    args = train.parse_args([*SIT, "--results-dir", str(tmp_path), "--sample-every", "1", "--cfg-scale", "1.5"])
    train.main(args)
    assert (tmp_path / "000-SiT-Ti-4" / "samples" / "0000001.png").is_file()
    assert json.loads((tmp_path / "000-SiT-Ti-4" / "args.json").read_text())["cfg_scale"] == 1.5
    args = train.parse_args([*SIT, "--wandb"])
    train.validate(args)
    assert args.report_to == "wandb"


@pytest.mark.parametrize("flags,needle", [
    (["--path-type", "VP", "--enc-type", "tiny-vit"], "trains plain SiT"),
    (["--prediction", "noise", "--weighting", "lognormal"], "draws times uniformly"),
    (["--model", "DiT-Ti/4", "--loss-weight", "velocity"], "does not apply to DiT-Ti/4"),
    (["--sample-every", "0"], "--sample-every must be positive"),
])
def test_sit_flags_that_cannot_work_are_refused(flags, needle):
    args = train.parse_args([*SIT, *flags])
    with pytest.raises(ValueError, match=needle):
        train.validate(args)
