"""Bad input to sample.py / sample_ddp.py / generate.py: one line, before anything is loaded or written."""

import json
import os
from argparse import Namespace

import numpy as np
import pytest
import torch
from conftest import run_script

import generate
import sample
import sample_ddp
from models import create_model
from models.pretrained import resolve_sampling_config


def save_checkpoint(path, model_name="DiT-Ti/4", args=True, **kwargs):
    weights = create_model(model_name, input_size=16, num_classes=10, in_channels=3, **kwargs).state_dict()
    recorded = {"model": model_name, "image_size": 16, "num_classes": 10, "vae": "none"}
    torch.save({"ema": weights, "args": recorded} if args else weights, path)
    return path


def resolve(ckpt, **flags):
    args = Namespace(ckpt=str(ckpt), model=None, image_size=None, num_classes=None, vae=None, default_vae="none",
                     path_type=None, encoder_depth=None, projector_embed_dims=None, cls=None, legacy=False)
    vars(args).update(flags)
    return resolve_sampling_config(args)


def test_a_dit_checkpoint_is_not_loaded_as_a_sit(tmp_path):
    ckpt = save_checkpoint(tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="holds a DiT-Ti/4 .* not a SiT-Ti/4: leave out --model"):
        resolve(ckpt, model="SiT-Ti/4")
    official = save_checkpoint(tmp_path / "DiT-XL-2-256x256.pt", args=False)  # raw weights, as released
    with pytest.raises(ValueError, match="official DiT-XL/2 release, not a SiT"):
        resolve(official, model="SiT-XL/2")
    with pytest.raises(ValueError, match="official DiT-XL/2 release, not a SiT"):
        resolve(official, default_model="SiT-XL/2")  # generate.py's default for weights without args


@pytest.mark.slow
def test_raw_weights_of_another_shape_do_not_fit(tmp_path):
    ckpt = save_checkpoint(tmp_path / "raw.pt", args=False)
    proc = run_script("sample.py", "--ckpt", str(ckpt), "--model", "DiT-Ti/2", "--image-size", "16",
                      "--num-classes", "10", "--vae", "none", "--output", str(tmp_path / "s.png"))
    assert proc.returncode == 2 and "does not fit this model" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--heun"], "--heun is a step of the ODE sampler: it applies with --sampler ode, not ddpm"),
    (["--sampler", "sde", "--heun"], "--heun is a step of the ODE sampler: it applies with --sampler ode, not sde"),
    (["--cls-cfg-scale", "2"], "--cls-cfg-scale guides REG's class token"),
    (["--path-type", "linear"], "--path-type chooses the ODE / SDE sampler's path; ddpm follows"),
    (["--eta", "1"], "--eta is DDIM's noise level: it applies with --sampler ddim, not ddpm"),
    (["--num-sampling-steps", "0"], "--num-sampling-steps must be positive"),
    (["--per-proc-batch-size", "-1"], "--per-proc-batch-size must be positive"),
    (["--cfg-channels", "0"], "--cfg-channels must be positive"),
])
def test_sampling_flags_the_sampler_cannot_honour_are_refused(flags, message, tmp_path):
    ckpt = save_checkpoint(tmp_path / "dit.pt")
    args = sample_ddp.parse_args(["--ckpt", str(ckpt), "--sample-dir", str(tmp_path / "samples"), *flags])
    with pytest.raises(ValueError, match=message):
        sample_ddp.main(args)
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("model_name, flags", [
    ("DiT-Ti/4", ["--sampler", "ode", "--heun", "--path-type", "cosine", "--guidance-high", "0.7"]),
    ("DiT-Ti/4", ["--sampler", "ddpm", "--guidance-low", "0.2", "--cfg-channels", "2"]),
    ("SiT-Ti/4", ["--sampler", "ddim", "--eta", "1", "--guidance-high", "0.8"]),
    ("REG", ["--sampler", "ddpm", "--cls-cfg-scale", "2"]),
])
def test_any_checkpoint_samples_with_any_sampler_and_the_flags_it_honours(model_name, flags, tmp_path):
    reg = dict(z_dims=[32], cls_token_dim=32, encoder_depth=1) if model_name == "REG" else {}
    ckpt = save_checkpoint(tmp_path / "m.pt", "SiT-Ti/4" if reg else model_name, **reg)
    out = tmp_path / "grid.png"
    sample.main(sample.parse_args(["--ckpt", str(ckpt), "--num-sampling-steps", "3", "--output", str(out),
                                   "--class-labels", "0", "1", *flags]))
    assert out.is_file()


def test_class_token_guidance_is_refused_without_a_class_token(tmp_path):
    ckpt = save_checkpoint(tmp_path / "repa.pt", "SiT-Ti/4", z_dims=[32])
    args = generate.parse_args(["--ckpt", str(ckpt), "--cls-cfg-scale", "2", "--sample-dir", str(tmp_path / "s")])
    with pytest.raises(ValueError, match="--cls-cfg-scale guides REG's class token"):
        sample_ddp.main(args)


def test_sample_py_samples_a_dit_with_ddpm_by_default(tmp_path):
    ckpt = save_checkpoint(tmp_path / "dit.pt")
    args = sample.parse_args(["--ckpt", str(ckpt)])
    assert sample_ddp.choose_sampler(args, resolve(ckpt)[1]) == "ddpm"


def test_a_sample_folder_is_never_merged_with_another_runs_images(tmp_path):
    ckpt = save_checkpoint(tmp_path / "0000040.pt")
    common = ["--ckpt", str(ckpt), "--num-fid-samples", "4", "--num-sampling-steps", "2", "--sample-dir",
              str(tmp_path / "s")]
    first = sample_ddp.main(sample_ddp.parse_args([*common, "--per-proc-batch-size", "2"]))
    folder = first.with_suffix("")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["per_proc_batch_size"] == 2 and manifest["world_size"] == 1
    assert len(manifest["checkpoint_sha256"]) == 64 and manifest["checkpoint_sha256"][:8] in folder.name
    images = np.load(first)["arr_0"].copy()
    with pytest.raises(ValueError, match="per_proc_batch_size 2, not 4: .* not merged"):
        sample_ddp.main(sample_ddp.parse_args([*common, "--per-proc-batch-size", "4"]))
    # Another run's checkpoint of the same name gets its own folder.
    other = tmp_path / "other" / "0000040.pt"
    other.parent.mkdir()
    torch.manual_seed(1)
    save_checkpoint(other)
    second = sample_ddp.main(sample_ddp.parse_args([*common, "--per-proc-batch-size", "2", "--ckpt", str(other)]))
    assert second != first and np.array_equal(np.load(first)["arr_0"], images)
    # PNGs with no manifest: nothing says what drew them.
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="without a manifest.json"):
        sample_ddp.main(sample_ddp.parse_args([*common, "--per-proc-batch-size", "2"]))


@pytest.mark.parametrize("script", ["train", "sample", "sample_ddp", "generate"])
def test_help_shows_the_whole_first_paragraph(script, capsys):
    import importlib

    module = importlib.import_module(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    words = " ".join(capsys.readouterr().out.split())
    paragraph = " ".join(module.__doc__.strip().split("\n\n")[0].split())
    assert paragraph in words and paragraph.endswith(".")


def save_generator(path, sigmas=(14.6, 1.0)):
    """A distilled generator as train_dmd2.py saves it: the network under ``model`` and its noise levels."""
    weights = create_model("DiT-Ti/4", input_size=16, num_classes=10, in_channels=3).state_dict()
    recorded = {"model": "DiT-Ti/4", "image_size": 16, "num_classes": 10, "vae": "none"}
    torch.save({"model": weights, "args": recorded, "generator_sigmas": list(sigmas)}, path)
    return path


def test_fewstep_on_a_model_that_is_not_a_generator_is_one_line(tmp_path, capsys):
    from common.cli import run_cli

    ckpt = save_checkpoint(tmp_path / "dit.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sample_ddp.main, sample_ddp.parse_args(["--ckpt", str(ckpt), "--sampler", "fewstep",
                                                         "--sample-dir", str(tmp_path / "s")]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--sampler fewstep is how a distilled generator" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("script, flags, named", [
    (sample_ddp, ["--eta", "0.5"], "--eta"), (sample_ddp, ["--num-sampling-steps", "250"], "--num-sampling-steps"),
    (generate, ["--num-steps", "4"], "--num-steps"), (sample_ddp, ["--heun"], "--heun"),
    (generate, ["--guidance-high", "0.7"], "--guidance-high"), (sample_ddp, ["--S_churn", "40"], "--S_churn"),
    (generate, ["--path-type", "Linear"], "--path-type"),
])
def test_a_generator_refuses_the_flags_of_other_samplers(script, flags, named, tmp_path):
    """A distilled generator samples with its own levels: a flag that would change another sampler is refused in one
    line (docs/running.md, "Guidance"), even at the value it would take, before anything is written."""
    ckpt = save_generator(tmp_path / "generator.pt")
    args = script.parse_args(["--ckpt", str(ckpt), "--sample-dir", str(tmp_path / "s"), "--num-fid-samples", "2",
                              "--per-proc-batch-size", "2", *flags])
    with pytest.raises(ValueError, match=f"distilled 2-step generator .*{named}.* cannot change") as info:
        sample_ddp.main(args)
    assert "\n" not in str(info.value) and not (tmp_path / "s").exists()


def test_the_manifest_records_the_generators_own_steps(tmp_path):
    ckpt = save_generator(tmp_path / "generator.pt")
    npz = sample_ddp.main(sample_ddp.parse_args(["--ckpt", str(ckpt), "--num-fid-samples", "2",
                                                 "--per-proc-batch-size", "2", "--sample-dir", str(tmp_path / "s")]))
    manifest = json.loads((npz.with_suffix("") / "manifest.json").read_text())
    assert manifest["sampling"]["sampler"] == "fewstep" and manifest["sampling"]["num_steps"] == 2
    assert "fewstep2" in npz.name


@pytest.mark.parametrize("script", [sample, sample_ddp, generate])
@pytest.mark.parametrize("flag", ["--local-rank=0", "--local_rank=0"])
def test_torch_distributed_launch_rank_flag_is_accepted(script, flag, monkeypatch):
    """python -m torch.distributed.launch (REG's eval.sh) passes --local-rank=N (older torch: --local_rank=N):
    taken, and LOCAL_RANK set from it where the launcher left it unset."""
    monkeypatch.setenv("LOCAL_RANK", "")  # restored when the test ends, whatever parsing sets
    monkeypatch.delenv("LOCAL_RANK")
    args = script.parse_args(["--ckpt", "c.pt", flag])
    assert args.local_rank == 0 and os.environ["LOCAL_RANK"] == "0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    script.parse_args(["--ckpt", "c.pt", flag.replace("0", "1")])
    assert os.environ["LOCAL_RANK"] == "3"
