"""train_dmd2.py takes every flag of DMD2's two training scripts: run management (--ckpt_only_path,
--generator_ckpt_path, --delete_ckpts, --cache_dir / --max_checkpoint, --no_save), logging (--wandb_*,
--log_path, --log_loss, --grid_size, --dataset_name), the loss weights (--dm_loss_weight, --gan_alone),
--gradient_checkpointing, the checks against the teacher, and one-line refusals for the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import train_dmd2
from common.checkpoint import load_checkpoint
from methods.dmd2_cli import build_method, check_teacher_shape, load_teacher, parse_args, validate

# Every flag of tianweiy/DMD2 @ 8d8fa55 main/edm/train_edm.py and main/train_sd.py (their argparse option names).
DMD2_FLAGS = """backward_simulation batch_size cache_dir checkpoint_path ckpt_only_path cls_loss_weight cls_on_clean_image
conditioning_sigma conditioning_timestep dataset_name delete_ckpts denoising denoising_loss_weight denoising_timestep
dfake_gen_update_ratio diffusion_gan diffusion_gan_max_timestep dm_loss_weight fake_guidance_scale fsdp gan_alone
gan_classifier gen_cls_loss gen_cls_loss_weight generator_ckpt_path generator_lora generator_lr
gradient_accumulation_steps gradient_checkpointing grid_size guidance_cls_loss_weight guidance_lr initialie_generator
label_dim latent_channel latent_resolution local_rank log_iters log_loss log_path lora_alpha lora_dropout lora_rank
lr max_checkpoint max_grad_norm max_step_percent min_step_percent model_id no_save num_denoising_step
num_train_timesteps num_workers output_path real_guidance_scale real_image_path resolution revision rho sdxl seed
sigma_data sigma_max sigma_min tiny_vae train_iters train_prompt_path use_fp16 wandb_entity wandb_iters wandb_name
wandb_project warmup_step""".split()

TINY = ["--dataset", "builtin", "--batch_size", "4", "--num_workers", "0", "--generator_lr", "1e-3",
        "--guidance_lr", "1e-3", "--warmup_step", "2", "--real_guidance_scale", "2", "--gan_classifier",
        "--gen_cls_loss_weight", "3e-3", "--cls_loss_weight", "1e-2", "--wandb_iters", "2"]


@pytest.fixture(scope="module")
def teacher(trained_run) -> Path:
    return trained_run / "checkpoints" / "0000020.pt"


def test_every_dmd2_flag_is_known():
    parser_flags = set()
    import argparse

    original = argparse.ArgumentParser.parse_args
    try:  # the parser train_dmd2.py builds, read off its options
        argparse.ArgumentParser.parse_args = lambda self, argv=None: parser_flags.update(self._option_string_actions)
        parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    assert len(DMD2_FLAGS) == 73
    assert [f for f in DMD2_FLAGS if f"--{f}" not in parser_flags] == []


@pytest.mark.parametrize("flags, message", [
    (["--sdxl"], "not a Stable Diffusion model"), (["--tiny_vae"], "not a Stable Diffusion model"), (["--revision", "fp16"], "is a local folder: drop --revision"),
    (["--lr", "1e-5"], "--generator_lr and --guidance_lr"), (["--denoising_loss_weight", "2"], "weight 1"),
    (["--fake_guidance_scale", "2"], "--real_guidance_scale"), (["--gradient_accumulation_steps", "2"], "must be 1"),
    (["--num_train_timesteps", "500"], "1000 levels"), (["--gan_alone"], "add --gan_classifier"),
    (["--gan_alone", "--gan_classifier"], "--gen_cls_loss_weight > 0"), (["--grid_size", "0"], "at least 1"),
    (["--ckpt_only_path", "{t}", "--checkpoint_path", "{t}"], "pass one"),
    (["--ckpt_only_path", "{t}", "--generator_ckpt_path", "{t}"], "drop --generator_ckpt_path"),
    (["--generator_ckpt_path", "missing.pt"], "does not exist"),
    (["--denoising", "--num_denoising_step", "4", "--denoising_timestep", "5000"],
     r"--denoising_timestep 5000: with --num_denoising_step 4 it must lie between 5 and 1000"),
    (["--denoising", "--num_denoising_step", "4", "--denoising_timestep", "4"], "between 5 and 1000"),
    (["--denoising_timestep", "500"], "add --denoising"), (["--num_denoising_step", "0"], "at least 1"),
])
def test_refusals_are_one_line(teacher, flags, message):
    args = parse_args(["--teacher", str(teacher), *[f.format(t=teacher) for f in flags]])
    with pytest.raises(ValueError, match=message):
        validate(args)


def test_wandb_flags_ask_for_wandb_and_local_rank_sets_the_environment(teacher, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "")  # restored when the test ends, whatever validate sets
    monkeypatch.delenv("LOCAL_RANK")
    args = parse_args(["--teacher", str(teacher), "--wandb_project", "p", "--local_rank", "3"])
    validate(args)
    assert args.report_to == "wandb" and os.environ["LOCAL_RANK"] == "3"
    args = parse_args(["--teacher", str(teacher), "--wandb_name", "n", "--report_to", "tensorboard"])
    validate(args)
    assert args.report_to == "tensorboard"


def test_shape_flags_must_agree_with_the_teacher():
    cfg = {"image_size": 64, "num_classes": 1000, "latent_size": 64, "latent_channels": 3, "ckpt": "edm.pkl"}
    check_teacher_shape(parse_args(["--resolution", "64", "--label_dim", "1000", "--latent_channel", "3"]), cfg)
    with pytest.raises(ValueError, match="--label_dim 10: the teacher edm.pkl has label_dim 1000"):
        check_teacher_shape(parse_args(["--label_dim", "10"]), cfg)
    with pytest.raises(ValueError, match="--latent_resolution 32"):
        check_teacher_shape(parse_args(["--latent_resolution", "32"]), cfg)


def build(teacher: Path, *flags: str):
    args = parse_args(["--teacher", str(teacher), "--real_guidance_scale", "2", *flags])
    validate(args)
    t, cfg, codec = load_teacher(args, torch.device("cpu"))
    cfg.update(latent_channels=3, latent_size=16)
    return t, build_method(args, t, cfg, codec, lambda b: (None, None), lambda n, d: torch.zeros(n, dtype=torch.long),
                           torch.device("cpu"), 4)


def test_loss_weights_and_gan_alone(teacher, monkeypatch):
    """--dm_loss_weight scales the DM loss; --gan_alone drops it and never runs the teacher."""
    x, y = torch.randn(4, 3, 16, 16, requires_grad=True), torch.zeros(4, dtype=torch.long)
    t, method = build(teacher, "--gan_classifier", "--gen_cls_loss_weight", "0.1", "--dm_loss_weight", "0.5")
    total, losses = method.generator_losses(method.modules["guidance"], x, y)
    torch.testing.assert_close(total, 0.5 * losses["loss_dm"] + 0.1 * losses["gen_cls_loss"])

    t, method = build(teacher, "--gan_classifier", "--gen_cls_loss_weight", "0.1", "--gan_alone")
    monkeypatch.setattr(t, "x0", lambda *a, **k: pytest.fail("the teacher ran"))
    total, losses = method.generator_losses(method.modules["guidance"], x, y)
    assert "loss_dm" not in losses
    torch.testing.assert_close(total, 0.1 * losses["gen_cls_loss"])
    total.backward()
    assert x.grad.abs().sum() > 0


def test_generator_ckpt_path_starts_the_generator_from_its_weights(teacher, tmp_path):
    """A plain state dict file, a DMD2 checkpoint folder (pytorch_model.bin) or a train_dmd2.py checkpoint."""
    weights = {k: v + 1 for k, v in load_checkpoint(teacher)["ema"].items()}
    torch.save(weights, tmp_path / "generator.pt")
    (tmp_path / "checkpoint_model_000100").mkdir()
    torch.save(weights, tmp_path / "checkpoint_model_000100" / "pytorch_model.bin")
    torch.save({"model": weights, "guidance": {}, "steps": 100}, tmp_path / "ours.pt")
    for source in ("generator.pt", "checkpoint_model_000100", "ours.pt"):
        _, method = build(teacher, "--generator_ckpt_path", str(tmp_path / source))
        assert all(torch.equal(weights[k], v) for k, v in method.modules["model"].state_dict().items()), source
    torch.save({k: v for k, v in list(weights.items())[1:]}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="1 missing keys .*distilled from this --teacher"):
        build(teacher, "--generator_ckpt_path", str(tmp_path / "short.pt"))


def test_run_management_and_logging_flags_end_to_end(teacher, tmp_path, monkeypatch):
    """One run with DMD2's run flags: only the newest checkpoint stays (--delete_ckpts), the cache keeps the newest
    --max_checkpoint, losses at every step (--log_loss), 2 x 2 grids, the dataset in the folder's name, wandb's
    project, entity, name and folder as given, checkpointed blocks. Then --ckpt_only_path from the run's weights in
    DMD2's folder layout: the step continues, the optimizers start afresh and the learning rates warm up from 0
    again (the first step, at learning rate 0, leaves the weights as they were)."""
    from accelerate import Accelerator

    import training.hooks

    trackers, grids = [], []
    monkeypatch.setattr(Accelerator, "init_trackers", lambda self, project, config=None, init_kwargs=None:
                        trackers.append((project, init_kwargs)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sample_grid = training.hooks.sample_grid
    monkeypatch.setattr(training.hooks, "sample_grid", lambda images_of, noise, labels, *a, nrow, **k:
                        grids.append((len(noise), nrow)) or sample_grid(images_of, noise, labels, *a, nrow=nrow, **k))
    out, cache, logs = tmp_path / "out", tmp_path / "cache", tmp_path / "logs"
    train_dmd2.main(train_dmd2.parse_args([
        "--teacher", str(teacher), "--output_path", str(out), *TINY, "--train_iters", "4", "--log_iters", "2",
        "--delete_ckpts", "--cache_dir", str(cache), "--max_checkpoint", "1", "--log_loss", "--grid_size", "2",
        "--dataset_name", "builtin10", "--wandb_project", "proj", "--wandb_entity", "team", "--wandb_name", "first",
        "--log_path", str(logs), "--gradient_checkpointing", "--resolution", "16", "--label_dim", "10"]))
    (run,) = list(out.iterdir())
    assert run.name.endswith("-DMD2-DiT-Ti-4-builtin10")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000004.pt"]
    assert sorted(p.name for p in (cache / run.name).iterdir()) == ["0000004.pt"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert grids and set(grids) == {(4, 2)}
    assert trackers == [("proj", {"wandb": {"dir": str(logs), "entity": "team", "name": "first"}})]
    assert "removed" in (run / "log.txt").read_text()

    first = load_checkpoint(run / "checkpoints" / "0000004.pt")
    folder = tmp_path / "dmd2" / "checkpoint_model_000004"
    folder.mkdir(parents=True)
    torch.save(first["model"], folder / "pytorch_model.bin")
    real = {f"real_unet.{k}": v for k, v in first["model"].items()}  # DMD2's guidance file holds the teacher too
    torch.save({**real, **first["guidance"]}, folder / "pytorch_model_1.bin")
    out2 = tmp_path / "out2"
    train_dmd2.main(train_dmd2.parse_args([
        "--teacher", str(teacher), "--output_path", str(out2), *TINY, "--train_iters", "5", "--log_iters", "5",
        "--dfake_gen_update_ratio", "1", "--ckpt_only_path", str(folder), "--no_save"]))
    (run2,) = list(out2.iterdir())
    assert not list((run2 / "checkpoints").iterdir())  # --no_save
    assert [json.loads(line)["step"] for line in (run2 / "metrics.jsonl").read_text().splitlines()] == [5]

    out3 = tmp_path / "out3"
    train_dmd2.main(train_dmd2.parse_args([
        "--teacher", str(teacher), "--output_path", str(out3), *TINY, "--train_iters", "5", "--log_iters", "5",
        "--dfake_gen_update_ratio", "1", "--ckpt_only_path", str(run / "checkpoints" / "0000004.pt")]))
    (run3,) = list(out3.iterdir())
    after = load_checkpoint(run3 / "checkpoints" / "0000005.pt")
    assert after["warmup_from"] == 4  # the warm-up restarts there, and a resume keeps it
    for key in ("model", "guidance"):  # learning rate 0 at the first step after the warm-up restarts
        assert all(torch.equal(first[key][k], after[key][k]) for k in first[key]), key
    assert all(int(s["step"]) == 1 for s in after["opt"]["state"].values())  # fresh optimizer states
    assert "--ckpt_only_path" in (run3 / "log.txt").read_text()


def test_a_second_stage_adds_the_gan_head_and_nothing_else(teacher, tmp_path, capsys):
    """DMD2's two-stage recipes (ImageNet: --gan_classifier; SD1.5: --cls_on_clean_image --gen_cls_loss) continue
    a run without the GAN head with --ckpt_only_path: what both have loads, the head starts fresh and the log names
    it. A checkpoint missing anything else is still refused in one line, before a run folder exists."""
    from common.cli import run_cli

    weights = load_checkpoint(teacher)["ema"]
    generator = {k: v + 1 for k, v in weights.items()}
    fake = {f"fake_unet.{k}": v - 1 for k, v in weights.items()}
    torch.save({"model": generator, "guidance": fake, "steps": 3}, tmp_path / "stage1.pt")
    out = tmp_path / "out"
    second = ["--teacher", str(teacher), *TINY, "--train_iters", "4", "--log_iters", "4"]  # TINY adds the head
    train_dmd2.main(train_dmd2.parse_args([*second, "--output_path", str(out), "--ckpt_only_path",
                                           str(tmp_path / "stage1.pt")]))
    (run,) = list(out.iterdir())
    after = load_checkpoint(run / "checkpoints" / "0000004.pt")
    assert all(torch.equal(generator[k], after["model"][k]) for k in generator)  # learning rate 0 after warm-up restart
    assert all(torch.equal(fake[k], after["guidance"][k]) for k in fake)
    assert {k for k in after["guidance"] if k not in fake} and all(
        k.startswith("cls_pred_branch.") for k in after["guidance"] if k not in fake)
    assert "has no cls_pred_branch.* (the GAN head), which this run adds: it starts fresh" in (run / "log.txt").read_text()

    capsys.readouterr()
    del fake["fake_unet.x_embedder.proj.weight"]
    torch.save({"model": generator, "guidance": fake, "steps": 3}, tmp_path / "short.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_dmd2.main, train_dmd2.parse_args([*second, "--output_path", str(tmp_path / "bad"),
                                                        "--ckpt_only_path", str(tmp_path / "short.pt")]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "1 missing keys (e.g. fake_unet.x_embedder.proj.weight)" in err and not (tmp_path / "bad").exists()


def test_warmup_is_dmd2s_scheduler_stepped_once_per_process():
    """DMD2 prepares its constant_with_warmup schedulers with accelerate, which steps them once per process
    each iteration: 500 warm-up steps on 7 GPUs last 72 iterations; without warm-up step 0 has the full rate."""
    from training.schedule import constant_with_warmup

    assert constant_with_warmup(0, 2e-6, 0) == 2e-6
    assert [constant_with_warmup(s, 1.0, 500) for s in (0, 250, 499, 500)] == [0.0, 0.5, 0.998, 1.0]
    assert constant_with_warmup(10, 1.0, 500, processes=7) == pytest.approx(70 / 500)
    assert constant_with_warmup(72, 1.0, 500, processes=7) == 1.0 > constant_with_warmup(71, 1.0, 500, processes=7)


def test_checkpoints_in_dmd2s_layout_are_what_its_own_readers_take(teacher, tmp_path):
    """--checkpoint_layout dmd2 also writes each checkpoint as DMD2 does, checkpoint_model_NNNNNN/ with the
    generator (pytorch_model.bin) and the guidance model (pytorch_model_1.bin); --delete_ckpts keeps the newest;
    --ckpt_only_path reads the folder back, its step from its name."""
    out = tmp_path / "out"
    train_dmd2.main(train_dmd2.parse_args(["--teacher", str(teacher), "--output_path", str(out), *TINY,
                                           "--train_iters", "4", "--log_iters", "2", "--checkpoint_layout", "dmd2",
                                           "--delete_ckpts"]))
    (run,) = list(out.iterdir())
    (folder,) = run.glob("checkpoint_model_*")
    assert folder.name == "checkpoint_model_000004"
    assert sorted(p.name for p in folder.iterdir()) == ["pytorch_model.bin", "pytorch_model_1.bin"]
    ours = load_checkpoint(run / "checkpoints" / "0000004.pt")
    for name, key in (("pytorch_model.bin", "model"), ("pytorch_model_1.bin", "guidance")):
        saved = torch.load(folder / name, map_location="cpu")
        assert saved.keys() == ours[key].keys() and all(torch.equal(saved[k], ours[key][k]) for k in saved)
    from methods.dmd2_weights import weights_only

    generator, guidance, step = weights_only(str(folder))
    assert step == 4 and generator.keys() == ours["model"].keys() and guidance.keys() == ours["guidance"].keys()
    assert "checkpoint_model_000004" in (run / "log.txt").read_text()
