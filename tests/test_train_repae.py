"""train_repae.py on the built-in images with tiny networks: the three updates and where their gradients
go, the checkpoint, exact resume, and bad input refused in one line."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

import generate
import save_vae_weights
import train_repae
from common.setup import setup_accelerator
from imagedata import build_dataset
from methods.repae_cli import build_method, validate
from models.vae import VAE_models, to_ldm_state_dict
from training.data import make_loader
from training.engine import Engine

pytestmark = pytest.mark.usefixtures("quick_grids")  # the runs' sample grids take 2 Euler steps


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A tiny VAE in REPA-E's released format (LDM names) with its latent statistics beside it."""
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), folder / "tiny.pt")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.zeros(1, 4, 1, 1)},
               folder / "tiny-latents-stats.pt")
    return folder / "tiny.pt"


def flags(vae_ckpt, out, *extra):
    return ["--exp-name", "run", "--output-dir", str(out), "--dataset", "builtin", "--num-classes", "10",
            "--resolution", "32", "--model", "SiT-Ti/1", "--vae", "tiny-f4d4", "--vae-ckpt", str(vae_ckpt),
            "--enc-type", "tiny-vit", "--encoder-depth", "1", "--batch-size", "4", "--no-compile",
            "--mixed-precision", "no", "--report-to", "none", "--lpips-random", "--num-workers", "0",
            "--log-every", "1", "--sampling-steps", "1000", *extra]


@pytest.fixture(scope="module")
def runs(tiny_vae, quick_grids, tmp_path_factory):
    """``a``: a run of 2 steps straight; ``b``: the same run stopped after step 1, then resumed from its
    checkpoint by re-running the command with ``--resume-step 1``."""
    out = tmp_path_factory.mktemp("runs")
    train_repae.main(train_repae.parse_args(flags(tiny_vae, out / "a", "--max-train-steps", "2",
                                                  "--checkpointing-steps", "2")))
    train_repae.main(train_repae.parse_args(flags(tiny_vae, out / "b", "--max-train-steps", "1",
                                                  "--checkpointing-steps", "2")))
    train_repae.main(train_repae.parse_args(flags(tiny_vae, out / "b", "--max-train-steps", "2",
                                                  "--checkpointing-steps", "2", "--resume-step", "1")))
    return out


def test_gradients_reach_the_vae_only_through_the_alignment_and_the_sit_only_in_its_own_step(tiny_vae, tmp_path):
    args = train_repae.parse_args(flags(tiny_vae, tmp_path, "--max-train-steps", "1"))
    validate(args)
    method = build_method(args, build_dataset("builtin", None, 32, 10, num_images=8), torch.device("cpu"))
    engine = Engine(setup_accelerator("no", "none"), method)
    engine.init_emas()
    seen = {}
    step = engine.step

    def spy(key, max_grad_norm=None):
        seen[key] = {name: [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in method.modules[name].parameters()]
                     for name in method.modules}
        return step(key, max_grad_norm)

    engine.step = spy
    pos_embed = method.modules["model"].pos_embed.detach().clone()
    batch = next(engine.batches(*make_loader(build_dataset("builtin", None, 32, 10, num_images=8), 4, 1, 0, 0, 0), 4))
    method.train_step(engine, batch)
    assert any(seen["opt_vae"]["vae"]) and not any(seen["opt_vae"]["model"])  # the SiT is frozen in the VAE step
    assert not any(seen["opt_disc"]["vae"]) and any(seen["opt_disc"]["discriminator"])
    assert any(seen["opt"]["model"]) and not any(seen["opt"]["vae"])  # the denoising loss never reaches the VAE
    sit = method.modules["model"]  # the fixed sin-cos table stays fixed through the switching of requires_grad
    assert not sit.pos_embed.requires_grad and torch.equal(sit.pos_embed, pos_embed)

    # The VAE's only link to the SiT is the alignment: with every VAE loss weighted 0 but it, the
    # encoder still gets a gradient; with the alignment weighted 0 as well, nothing does.
    for coeff, expect in ((1.5, True), (0.0, False)):
        method.vae_align_proj_coeff = coeff
        method.vae_loss.config = type(method.vae_loss.config)(reconstruction_weight=0.0, perceptual_weight=0.0,
                                                              kl_weight=0.0, discriminator_weight=0.0)
        method.train_step(engine, batch)
        assert any(seen["opt_vae"]["vae"]) == expect


def loss_config(folder, **weights) -> str:
    """A copy of REPA-E's loss YAML with some weights changed."""
    text = "model: {vq_model: {quantize_mode: vae}}\nlosses:\n" + "".join(f"  {k}: {v}\n" for k, v in weights.items())
    path = folder / f"loss-{len(list(folder.glob('loss-*.yaml')))}.yaml"
    path.write_text(text)
    return str(path)


def fresh(vae_ckpt, folder, *extra):
    """A freshly built REPA-E method (seed 0), its engine and one batch of 4 built-in images."""
    args = train_repae.parse_args(flags(vae_ckpt, folder, "--max-train-steps", "1", *extra))
    validate(args)
    torch.manual_seed(0)
    dataset = build_dataset("builtin", None, 32, 10, num_images=8)
    method = build_method(args, dataset, torch.device("cpu"))
    engine = Engine(setup_accelerator("no", "none"), method)
    engine.init_emas()
    batch = next(engine.batches(*make_loader(dataset, 4, 1, 0, 0, 0), 4))
    return method, engine, batch


def one_step(engine, batch, seed: int = 1) -> None:
    """The engine's step (the method's three updates, then the EMA) from a fixed random state."""
    torch.manual_seed(seed)
    engine.one_step(iter([batch]))


@torch.no_grad()
def reconstruction(method, x, seed: int = 2) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return method.modules["vae"](x)[2]


def test_the_vae_step_raises_the_discriminators_score_of_its_reconstructions(tiny_vae, tmp_path):
    """With the GAN term alone, the VAE's update makes its reconstructions look more real to the
    discriminator it was taken against (hinge GAN, generator side: -D(recon))."""
    cfg = loss_config(tmp_path, reconstruction_weight=0.0, perceptual_weight=0.0, kl_weight=0.0,
                      discriminator_weight=1.0)
    method, engine, batch = fresh(tiny_vae, tmp_path, "--loss-cfg-path", cfg, "--vae-align-proj-coeff", "0")
    x = method.batches(batch)[1]
    critic = deepcopy(method.modules["discriminator"])  # in training mode, as the step reads it
    with torch.no_grad():
        before = critic(reconstruction(method, x)).mean()
    one_step(engine, batch)
    with torch.no_grad():
        after = critic(reconstruction(method, x)).mean()
    assert after - before > 0.02, f"D(recon) went from {before:.4f} to {after:.4f}"  # measured +0.05 (-0.05 flipped)


def test_the_discriminator_step_raises_its_score_of_images_and_lowers_that_of_reconstructions(tiny_vae, tmp_path):
    """The hinge loss has the images on its real branch and the reconstructions on its fake one."""
    method, engine, batch = fresh(tiny_vae, tmp_path)
    x, disc = method.batches(batch)[1], method.modules["discriminator"]
    recon = reconstruction(method, x)
    with torch.no_grad():
        real, fake = disc(x).mean(), disc(recon).mean()
    one_step(engine, batch)
    with torch.no_grad():
        real_after, fake_after = disc(x).mean(), disc(recon).mean()
    assert real_after - real > 1e-3 and fake - fake_after > 1e-3, \
        f"D(x) {real:.5f} -> {real_after:.5f}, D(recon) {fake:.5f} -> {fake_after:.5f}"


def test_the_vae_losses_leave_the_discriminator_and_the_sit_updates_unchanged(tiny_vae, tmp_path):
    """The discriminator and the SiT are frozen in the VAE's step: however the VAE's GAN term and its
    alignment are weighted, their own updates (and the SiT's EMA) come out the same."""
    after = []
    for weight, coeff in ((0.1, 1.5), (10.0, 100.0)):
        cfg = loss_config(tmp_path, discriminator_weight=weight, perceptual_weight=0.0)
        method, engine, batch = fresh(tiny_vae, tmp_path, "--loss-cfg-path", cfg, "--vae-align-proj-coeff", str(coeff))
        one_step(engine, batch)
        after.append(engine.state_dict({}))
    assert not all(torch.equal(v, after[1]["vae"][k]) for k, v in after[0]["vae"].items())  # the VAE's did change
    for key in ("discriminator", "model", "ema"):
        for name, value in after[0][key].items():
            assert torch.equal(value, after[1][key][name]), f"{key}.{name} depends on the VAE's loss weights"


def test_the_latent_batchnorm_moves_once_a_step_in_the_sit_step_and_the_ema_follows(tiny_vae, tmp_path):
    """The SiT's BatchNorm keeps its running statistics in the VAE's step (eval mode) and updates them in
    its own step (train mode): one update per step; the EMA averages them like the weights."""
    method, engine, batch = fresh(tiny_vae, tmp_path)
    bn, ema_bn = method.modules["model"].bn, engine.emas["ema"].bn
    start = bn.running_mean.clone(), bn.running_var.clone()
    one_step(engine, batch)
    assert int(bn.num_batches_tracked) == 1
    for name, before in zip(("running_mean", "running_var"), start):
        moved = getattr(bn, name)
        assert (moved - before).abs().min() > 1e-4, f"{name} did not move"
        torch.testing.assert_close(getattr(ema_bn, name), torch.lerp(before, moved, 1 - 0.9999))


def test_the_sit_step_reuses_the_time_and_noise_of_the_vae_steps_alignment(tiny_vae, tmp_path):
    """REPA-E draws one time and one noise per sample for the step: the SiT's update sees the latents
    noised exactly as the VAE's alignment did."""
    method, engine, batch = fresh(tiny_vae, tmp_path)
    objective, calls = method.objective, []

    class Recording:
        def __getattr__(self, name):
            return getattr(objective, name)

        def __call__(self, *args, **kwargs):
            calls.append(kwargs)
            return objective(*args, **kwargs)

    method.objective = Recording()
    one_step(engine, batch)
    align, sit = calls
    assert align.get("align_only") and not sit.get("align_only")
    assert sit.get("t") is align["t"] and sit.get("noise") is align["noise"]


def test_max_grad_norm_clips_all_three_updates(tiny_vae, tmp_path):
    """Gradients clipped to a norm far below Adam's epsilon leave every network (almost) where it was;
    unclipped, Adam's first step moves each trained weight by about the learning rate (1e-4)."""
    method, engine, batch = fresh(tiny_vae, tmp_path, "--max-grad-norm", "1e-12")
    before = {key: {k: p.detach().clone() for k, p in engine.module(key).named_parameters()} for key in method.modules}
    one_step(engine, batch)
    for key, weights in before.items():
        moved = max((p - weights[k]).abs().max() for k, p in engine.module(key).named_parameters())
        assert moved < 1e-7, f"{key} moved by {moved:.2e} with gradients clipped to 1e-12"


@pytest.mark.slow
def test_a_run_checkpoints_repaes_keys_and_resumes_exactly(runs, tmp_path):
    straight = torch.load(runs / "a" / "run" / "checkpoints" / "0000002.pt", weights_only=False)
    assert {"model", "ema", "vae", "discriminator", "opt", "opt_vae", "opt_disc", "args", "steps"} <= set(straight)
    assert "bn.running_var" in straight["ema"] and (runs / "a" / "run" / "samples" / "0000002.png").is_file()
    assert "encoder.down.0.block.0.conv1.weight" in straight["vae"]  # REPA-E's (LDM) names

    resumed = torch.load(runs / "b" / "run" / "checkpoints" / "0000002.pt", weights_only=False)
    for key in ("model", "ema", "vae", "discriminator"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"

    # generate.py samples the run with its own tuned VAE and the EMA's latent statistics
    npz = generate.main(generate.parse_args([
        "--exp-path", str(runs / "a" / "run"), "--train-steps", "2", "--num-fid-samples", "4",
        "--pproc-batch-size", "4", "--num-steps", "3", "--sample-dir", str(tmp_path / "samples")]))
    assert "vae-tiny-f4d4" in npz.name and np.load(npz)["arr_0"].shape == (4, 32, 32, 3)
    repaes = tmp_path / "samples" / "run_0000002_cfg1.5-0.0-1.0.npz"  # REPA-E's own name, for its evaluation
    assert np.array_equal(np.load(repaes)["arr_0"], np.load(npz)["arr_0"])

    # save_vae_weights.py: the tuned VAE, its statistics and the discriminator feed a new run
    files = save_vae_weights.main(save_vae_weights.parse_args([
        "--repae-ckpt", str(runs / "a" / "run" / "checkpoints" / "0000002.pt"), "--vae-name", "e2e",
        "--save-dir", str(tmp_path / "pretrained")]))
    assert [f.name for f in files] == ["e2e.pt", "e2e-latents-stats.pt", "e2e-discriminator-ckpt.pt"]
    stats = torch.load(files[1])
    torch.testing.assert_close(stats["latents_scale"].flatten(), straight["ema"]["bn.running_var"].rsqrt())
    args = train_repae.parse_args(flags(files[0], tmp_path / "c", "--max-train-steps", "1",
                                        "--disc-pretrained-ckpt", str(files[2])))
    validate(args)
    method = build_method(args, build_dataset("builtin", None, 32, 10, num_images=8), torch.device("cpu"))
    torch.testing.assert_close(method.modules["model"].bn.running_mean, straight["ema"]["bn.running_mean"])
    tuned = method.export_weights("vae", method.modules["vae"].state_dict())
    assert all(torch.equal(tuned[k], v) for k, v in straight["vae"].items())


@pytest.mark.parametrize("change, message", [
    (lambda a, p: a.__setitem__(a.index("--vae-ckpt") + 1, str(p / "missing.pt")), "--vae-ckpt .*missing.pt: no such file"),
    (lambda a, p: a.__setitem__(a.index("--vae") + 1, "f8d4"), "does not fit this VAE.*other architecture"),
    (lambda a, p: a.__setitem__(a.index("--encoder-depth") + 1, "5"), "encoder_depth 5 must be between 1 and depth 2"),
    (lambda a, p: a.extend(["--loss-cfg-path", str(p / "bad.yaml")]), "unknown key.*losses.gan_weight"),
    (lambda a, p: a.append("--no-fused-attn"), "--no-fused-attn"),
    (lambda a, p: a.extend(["--model", "DiT-Ti/4"]), "REPA-E trains a SiT"),
])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(tiny_vae, tmp_path, change, message):
    (tmp_path / "bad.yaml").write_text("losses:\n  gan_weight: 0.1\n")
    argv = flags(tiny_vae, tmp_path / "out", "--max-train-steps", "1")
    change(argv, tmp_path)
    with pytest.raises(ValueError, match=message):
        train_repae.main(train_repae.parse_args(argv))
    assert not (tmp_path / "out").exists()


def test_missing_latent_statistics_are_named(tiny_vae, tmp_path):
    lone = tmp_path / "lone.pt"
    lone.write_bytes(tiny_vae.read_bytes())
    with pytest.raises(ValueError, match="lone-latents-stats.pt: missing"):
        train_repae.main(train_repae.parse_args(flags(lone, tmp_path / "out", "--max-train-steps", "1")))


@pytest.mark.slow
def test_a_checkpoint_of_repaes_own_code_resumes_with_fresh_vae_and_discriminator_optimizers(tiny_vae, runs,
                                                                                             tmp_path):
    """REPA-E's checkpoints have no RNG or data position, and their VAE and discriminator optimizers list
    parameters in another order: the weights and the SiT's optimizer load, the other two start afresh."""
    import argparse

    ckpt = torch.load(runs / "b" / "run" / "checkpoints" / "0000001.pt", weights_only=False)  # one of ours
    theirs = {k: ckpt[k] for k in ("model", "ema", "vae", "discriminator", "opt", "opt_vae", "opt_disc", "steps")}
    theirs["args"] = argparse.Namespace(**ckpt["args"])
    (tmp_path / "released" / "checkpoints").mkdir(parents=True)
    torch.save(theirs, tmp_path / "released" / "checkpoints" / "0000001.pt")
    train_repae.main(train_repae.parse_args(flags(tiny_vae, tmp_path / "out", "--max-train-steps", "2",
                                                  "--checkpointing-steps", "2", "--resume-step", "1",
                                                  "--continue-train-exp-dir", str(tmp_path / "released"))))
    log = next((tmp_path / "out").glob("*/log.txt")).read_text()
    assert "no opt_vae: that optimizer starts afresh" in log and "no opt_disc" in log
    resumed = torch.load(next((tmp_path / "out").glob("*/checkpoints/0000002.pt")), weights_only=False)
    assert resumed["steps"] == 2 and "opt" in resumed


@pytest.mark.slow
def test_the_trackers_write_into_logging_dir_inside_the_run_folder(tiny_vae, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = flags(tiny_vae, tmp_path, "--max-train-steps", "1", "--checkpointing-steps", "1")
    argv[argv.index("--report-to") + 1] = "wandb"
    train_repae.main(train_repae.parse_args([*argv, "--logging-dir", "wb"]))
    assert any((tmp_path / "run" / "wb" / "wandb").glob("offline-run-*"))
