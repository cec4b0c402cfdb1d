"""REPA-E's tools refuse bad input in one line: save_vae_weights.py (names with folders, overwriting),
--vae-ckpt given a file that holds no VAE, pretrain_vae.py launched on several processes."""

from __future__ import annotations

import argparse

import pytest
import torch

import save_vae_weights
from common.checkpoint import CheckpointError, rng_state, save_atomic
from models.discriminator import NLayerDiscriminator
from models.vae import VAE_models, load_vae_weights, to_ldm_state_dict


def repae_checkpoint(path, seed: int = 0):
    """A train_repae.py checkpoint of a tiny VAE: vae, ema (with the latent BatchNorm), discriminator."""
    torch.manual_seed(seed)
    ema = {"bn.running_mean": torch.randn(4), "bn.running_var": torch.rand(4) + 0.5}
    torch.save({"vae": to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), "ema": ema,
                "discriminator": NLayerDiscriminator(ndf=8, n_layers=1).state_dict(), "steps": 2}, path)
    return path


def save(ckpt, save_dir, name="e2e", *extra):
    return save_vae_weights.main(save_vae_weights.parse_args([
        "--repae-ckpt", str(ckpt), "--vae-name", name, "--save-dir", str(save_dir), *extra]))


@pytest.mark.parametrize("name", ["../../x", "a/b", "ABSOLUTE", "..", "."])
def test_save_vae_weights_refuses_names_with_folders(tmp_path, name):
    ckpt = repae_checkpoint(tmp_path / "ckpt.pt")
    name = str(tmp_path / "x") if name == "ABSOLUTE" else name
    with pytest.raises(ValueError, match="--vae-name .*: give a plain name without folders"):
        save(ckpt, tmp_path / "a" / "b", name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ckpt.pt"]


def test_save_vae_weights_keeps_existing_files_unless_told_to_overwrite(tmp_path):
    first = save(repae_checkpoint(tmp_path / "first.pt"), tmp_path / "out")
    assert [f.name for f in first] == ["e2e.pt", "e2e-latents-stats.pt", "e2e-discriminator-ckpt.pt"]
    kept = [f.read_bytes() for f in first]
    second = repae_checkpoint(tmp_path / "second.pt", seed=1)
    with pytest.raises(ValueError, match="e2e.pt exists \\(3 of the VAE's 3 files\\); pass --overwrite"):
        save(second, tmp_path / "out")
    assert [f.read_bytes() for f in first] == kept
    first[0].unlink()  # one file left over is refused as well
    with pytest.raises(ValueError, match="e2e-latents-stats.pt exists \\(2 of the VAE's 3 files\\)"):
        save(second, tmp_path / "out")
    save(second, tmp_path / "out", "e2e", "--overwrite")
    stats = torch.load(first[1])["latents_bias"].flatten()
    torch.testing.assert_close(stats, torch.load(second)["ema"]["bn.running_mean"])


def train_checkpoint(path):
    """What train.py writes: a DiT's weights, optimizer, arguments, steps and every process' RNG state."""
    model = torch.nn.Linear(4, 4)
    save_atomic({"model": model.state_dict(), "ema": model.state_dict(),
                 "opt": torch.optim.AdamW(model.parameters()).state_dict(),
                 "args": vars(argparse.Namespace(model="DiT-Ti/4")), "steps": 3, "rng": [rng_state()],
                 "data": {"epoch": 0, "consumed": 24}}, path)
    return path


def test_a_file_that_holds_no_vae_is_refused_in_one_line_saying_what_it_holds(tmp_path):
    vae = VAE_models["tiny-f4d4"]()
    path = train_checkpoint(tmp_path / "0000003.pt")
    with pytest.raises(CheckpointError, match=f"--vae-ckpt {path} is a training checkpoint without a VAE \\(it "
                                              "holds model, ema, opt, args, steps, ...\\); pass a VAE's weights"):
        load_vae_weights(vae, path)
    torch.save({"blocks.0.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a VAE's weights \\(it holds blocks.0.weight\\)"):
        load_vae_weights(vae, tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt is not a VAE's weights \\(it holds a list\\)"):
        load_vae_weights(vae, tmp_path / "list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt could not be read"):
        load_vae_weights(vae, tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="--vae-ckpt-path .* is a training checkpoint without a VAE"):
        load_vae_weights(vae, path, "--vae-ckpt-path")
    # a train_repae.py checkpoint (RNG states beside the weights) is a VAE's file: its vae
    ckpt = torch.load(repae_checkpoint(tmp_path / "repae.pt"))
    torch.save({**ckpt, "rng": [rng_state()]}, tmp_path / "repae.pt")
    load_vae_weights(vae, tmp_path / "repae.pt")
    assert torch.equal(to_ldm_state_dict(vae.state_dict())["encoder.conv_in.weight"], ckpt["vae"]["encoder.conv_in.weight"])


def test_pretrain_vae_refuses_more_than_one_process(tmp_path, monkeypatch):
    from preprocessing import pretrain_vae

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = pretrain_vae.parse_args(["--data-dir", str(tmp_path), "--save-dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="pretrain_vae.py runs on one process, not 2: run it with python"):
        pretrain_vae.main(args)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="images.h5: no such file"):  # one process goes on to the data
        pretrain_vae.main(args)


@pytest.mark.multiprocess
def test_pretrain_vae_launched_on_two_processes_exits_with_one_line(tmp_path):
    from conftest import run_script

    proc = run_script("preprocessing/pretrain_vae.py", "--data-dir", str(tmp_path), "--save-dir", str(tmp_path / "out"),
                      env={"WORLD_SIZE": "2", "RANK": "1"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: preprocessing/pretrain_vae.py runs on one process, not 2: run it with python (or torchrun "
        "--nproc_per_node 1)"]
    assert not (tmp_path / "out").exists()
