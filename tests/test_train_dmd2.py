"""train_dmd2.py end to end on a tiny DiT teacher: the two time-scale update rule across an exact resume, the
generator checkpoint sampled by sample.py, backward simulation, and the one-line refusals."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_script

import train_dmd2
from common.checkpoint import load_checkpoint
from common.cli import run_cli
from methods.dmd2_cli import EPS_CONDITIONING_SIGMA
from training.engine import NonFiniteLoss

TINY = ["--dataset", "builtin", "--batch_size", "4", "--num_workers", "0", "--generator_lr", "1e-3",
        "--guidance_lr", "1e-3", "--warmup_step", "2", "--real_guidance_scale", "2", "--gan_classifier",
        "--gen_cls_loss_weight", "3e-3", "--cls_loss_weight", "1e-2", "--diffusion_gan",
        "--diffusion_gan_max_timestep", "1000", "--dfake_gen_update_ratio", "3", "--wandb_iters", "1",
        "--log_iters", "3"]


@pytest.fixture(scope="module")
def teacher(trained_run) -> Path:
    return trained_run / "checkpoints" / "0000020.pt"


def distil(teacher: Path, out: Path, *extra: str) -> Path:
    train_dmd2.main(train_dmd2.parse_args(["--teacher", str(teacher), "--output_path", str(out), *TINY, *extra]))
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_update_ratio_holds_across_an_exact_resume(teacher, tmp_path):
    """Generator updates at steps 0 and 3 of 6 (ratio 3), the guidance model at every step; resuming the
    step-3 checkpoint ends bit-identical to the uninterrupted run."""
    whole = distil(teacher, tmp_path / "whole", "--train_iters", "6")
    updated = [r["step"] for r in records(whole) if "generator_loss" in r]
    assert updated == [1, 4] and all("loss_fake_mean" in r for r in records(whole))
    assert {"guidance_cls_loss", "gen_cls_loss", "loss_dm"} <= set(records(whole)[0])

    first = distil(teacher, tmp_path / "split", "--train_iters", "3")
    resumed = distil(teacher, tmp_path / "split", "--train_iters", "6", "--checkpoint_path",
                     str(first / "checkpoints" / "0000003.pt"))
    assert resumed == first  # the newest checkpoint of a run continues in its folder
    assert [r["step"] for r in records(resumed) if "generator_loss" in r] == [1, 4]
    a, b = (load_checkpoint(run / "checkpoints" / "0000006.pt") for run in (whole, resumed))
    for key in ("model", "guidance"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    # the generator changed at step 3 (an update) and the guidance model kept training
    mid = load_checkpoint(whole / "checkpoints" / "0000003.pt")
    assert any(not torch.equal(mid["model"][k], a["model"][k]) for k in a["model"])
    assert set(a["guidance"]) >= {"fake_unet.x_embedder.proj.weight", "cls_pred_branch.0.weight"}
    assert a["generator_sigmas"] == pytest.approx([14.6146], rel=1e-4)  # DiT's step 999 (sigma 157), capped

    # the generator's checkpoint is what sample.py samples: one step, no guidance
    out = tmp_path / "sample.png"
    result = run_script("sample.py", "--ckpt", str(whole / "checkpoints" / "0000006.pt"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "fewstep" not in result.stderr
    refused = run_script("sample.py", "--ckpt", str(whole / "checkpoints" / "0000006.pt"), "--cfg-scale", "4")
    assert refused.returncode == 2 and "guidance built in" in refused.stderr


def test_backward_simulation_lands_on_the_step_list_levels(teacher, monkeypatch):
    """With --denoising --backward_simulation the generator runs k of its steps from fresh noise at the
    step list's levels (DiT: [726, 545, 364, 183], the levels up to the cap), and is then trained at level k."""
    from loss.dmd import denoising_step_list
    from methods.dmd2_cli import EPS_CONDITIONING_SIGMA, build_method, load_teacher, parse_args

    args = parse_args(["--teacher", str(teacher), "--denoising", "--num_denoising_step", "4",
                       "--backward_simulation", "--real_guidance_scale", "1"])
    device = torch.device("cpu")
    t, cfg, codec = load_teacher(args, device)
    cfg.update(latent_channels=3, latent_size=16)
    method = build_method(args, t, cfg, codec, lambda b: (None, None), lambda n, d: torch.zeros(n, dtype=torch.long),
                          device, 2)
    top = int((t.sigmas <= EPS_CONDITIONING_SIGMA).sum())  # an eps teacher's steps stay below the cap
    levels = t.sigma(torch.tensor(denoising_step_list(4, top)))
    assert top == 727 and levels.tolist() == sorted(levels.tolist(), reverse=True)
    assert method.generator_sigmas == pytest.approx(levels.tolist())
    calls = []
    generate = method.generate

    def spy(net, x_vp, sigma, y):
        calls.append(float(sigma[0]))
        return generate(net, x_vp, sigma, y)

    monkeypatch.setattr(method, "generate", spy)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        calls.clear()
        x_vp, sigma = method.generator_input(method.modules["model"], 2, torch.zeros(2, dtype=torch.long), None, device)
        k = len(calls)
        assert calls == pytest.approx(levels[:k].tolist())  # k simulated steps, at the list's levels in order
        assert sigma.tolist() == pytest.approx([float(levels[k])] * 2)  # then trained at the k-th level
        seen.add(k)
        if k == 0:  # the first level is pure noise, whatever the simulation returned
            assert x_vp.std() > 0.8
    assert seen == {0, 1, 2, 3}


def test_generator_levels(teacher):
    """The conditioning level: the teacher's step 999 capped at sigma 14.6 for an eps teacher unless a level is
    given; --conditioning_timestep on the teacher's own grid (clamped), --conditioning_sigma on the common
    scale; an interpolant teacher starts from pure noise (t = 1)."""
    from exact_denoisers import ExactSiT

    from methods.dmd2_cli import EPS_CONDITIONING_SIGMA, generator_levels, load_teacher, parse_args
    from methods.dmd2_teacher import FlowTeacher

    def levels(*flags, t=None):
        args = parse_args(["--teacher", str(teacher), *flags])
        return generator_levels(args, t or load_teacher(args, torch.device("cpu"))[0])

    assert levels() == [EPS_CONDITIONING_SIGMA] and abs(EPS_CONDITIONING_SIGMA - 14.6146) < 1e-4
    assert levels("--conditioning_timestep", "999") == pytest.approx([157.4073], rel=1e-5)
    assert levels("--conditioning_timestep", "5000") == levels("--conditioning_timestep", "999")
    assert levels("--conditioning_sigma", "80") == [80.0]
    steps = levels("--denoising", "--num_denoising_step", "4")
    assert steps == sorted(steps, reverse=True) and steps[0] <= EPS_CONDITIONING_SIGMA
    dmd2 = levels("--denoising", "--num_denoising_step", "4", "--conditioning_timestep", "999")
    assert dmd2 == pytest.approx([157.4073, 17.2470, 3.4241, 0.9529], rel=1e-4)  # DMD2's [999, 749, 499, 249]
    assert levels("--denoising", "--num_denoising_step", "4", "--denoising_timestep", "1000") == dmd2
    flat = argparse.Namespace(family="edm", sigma=lambda index: torch.ones(len(index)))  # levels that do not decrease
    with pytest.raises(ValueError, match="do not strictly decrease"):
        levels("--denoising", "--num_denoising_step", "2", t=flat)
    flow = FlowTeacher(ExactSiT("linear"), "linear", None)
    assert levels(t=flow) == [float("inf")]
    assert levels("--conditioning_timestep", "499", t=flow) == pytest.approx([499 / 500])


def test_real_images_are_used_as_stored():
    """DMD2 flips nothing: the real images reach the GAN head and --denoising as stored, while train.py's batches
    still get DiT's random flip."""
    from models.vae import load_vae
    from training.data import Batches

    codec, device = load_vae("none", "cpu"), torch.device("cpu")
    x, y = torch.linspace(-1, 1, 8 * 3 * 4 * 4).reshape(8, 3, 4, 4), torch.arange(8)
    args = train_dmd2.parse_args(["--teacher", "unused.pt", "--dataset", "builtin"])
    kind, dataset, data = train_dmd2.open_data(args, {"model": "DiT-Ti/4", "image_size": 8, "num_classes": 10},
                                               SimpleNamespace(encoder=None), codec, device)
    dit = Batches(dataset, codec, device)
    torch.manual_seed(0)
    for _ in range(4):
        real, labels = data((x, y))
        assert torch.equal(real, x) and torch.equal(labels, y)
    assert kind == "builtin" and not torch.equal(dit((x, y))[1], x)  # 8 images, each flipped with probability 1/2


def refused(capsys, *flags: str) -> str:
    """train_dmd2.py's command line run in this process: exit status 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_dmd2.main, train_dmd2.parse_args(list(flags)), (NonFiniteLoss,))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_is_refused_in_one_line(teacher, tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    assert "not a teacher this repository can read" in refused(capsys, "--teacher", str(junk), "--output_path",
                                                               str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

    # a teacher without a null class cannot guide the real score
    ckpt = load_checkpoint(teacher)
    table = ckpt["ema"]["y_embedder.embedding_table.weight"]
    for key in ("ema", "model"):
        ckpt[key]["y_embedder.embedding_table.weight"] = table[:-1].clone()
    no_null = tmp_path / "no-null.pt"
    torch.save(ckpt, no_null)
    err = refused(capsys, "--teacher", str(no_null), "--real_guidance_scale", "4", "--output_path",
                  str(tmp_path / "out"))
    assert "null class" in err and "--real_guidance_scale 1" in err and not (tmp_path / "out").exists()

    # a REPA-E checkpoint (its own VAE, a latent BatchNorm) is refused before its VAE is read or a folder made
    from models import create_model

    sit = create_model("SiT-Ti/4", input_size=4, in_channels=4, num_classes=10, bn_momentum=0.1)
    repae = tmp_path / "repae.pt"
    torch.save({"ema": sit.state_dict(), "vae": {}, "args": {"model": "SiT-Ti/4", "vae": "tiny-f4d4",
                                                             "image_size": 16, "num_classes": 10}}, repae)
    err = refused(capsys, "--teacher", str(repae), "--dataset", "builtin", "--output_path", str(tmp_path / "out"))
    assert "is a REPA-E model" in err and not (tmp_path / "out").exists()

    # real data the generator's samples cannot be compared with: refused before the run folder is made
    def small_images(args, cfg, teacher, codec, device):
        from imagedata import build_dataset
        from training.data import Batches

        dataset = build_dataset("builtin", None, 8, cfg["num_classes"], num_images=8)
        return "builtin", dataset, lambda batch: Batches(dataset, codec, device, flip=False)(batch)[1:]

    monkeypatch.setattr(train_dmd2, "open_data", small_images)
    err = refused(capsys, "--teacher", str(teacher), "--real_guidance_scale", "1", "--gan_classifier",
                  "--batch_size", "2", "--num_workers", "0", "--output_path", str(tmp_path / "out"))
    assert "(3, 8, 8) per item" in err and "makes (3, 16, 16)" in err and not (tmp_path / "out").exists()

    from methods.dmd2_cli import parse_args, validate

    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ValueError, match="pip install peft"):
        validate(parse_args(["--teacher", str(teacher), "--generator_lora"]))
    with pytest.raises(ValueError, match="add --denoising"):
        validate(parse_args(["--teacher", str(teacher), "--backward_simulation"]))


@pytest.mark.slow
def test_edm_teacher_from_its_pickle(tmp_path):
    """EDM's network pickle as the teacher (DMD2's ImageNet recipe in miniature): the GAN head on EDM's encoder
    output, conditioning sigma 80 on the Karras grid, LoRA on the generator; then sample.py reads the generator
    (one step) and the pickle itself (EDM's sampler)."""
    from common.checkpoint import load_checkpoint
    from models.pretrained import EDM_IMAGENET64, resolve_sampling_config

    pkl = Path(__file__).parent / "fixtures" / "edm_tiny_snapshot.pkl"
    train_dmd2.main(train_dmd2.parse_args(["--teacher", str(pkl), "--output_path", str(tmp_path / "edm"),
                                           "--dataset", "builtin", "--batch_size", "4", "--num_workers", "0",
                                           "--train_iters", "2", "--log_iters", "2", "--wandb_iters", "2",
                                           "--gan_classifier", "--gen_cls_loss_weight", "3e-3",
                                           "--cls_loss_weight", "1e-2", "--generator_lora", "--lora_rank", "2"]))
    (run,) = list((tmp_path / "edm").iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "0000002.pt")
    assert ckpt["generator_sigmas"] == [80.0] and ckpt["args"]["real_guidance_scale"] == 1.0  # no null class
    assert "cls_pred_branch.0.weight" in ckpt["guidance"] and any("lora_A" in k for k in ckpt["model"])
    # built as DMD2 builds its EDM networks, whatever the pickle recorded (use_fp16, dropout 0.1): fp32, no dropout
    assert {k: ckpt["model_kwargs"][k] for k in ("use_fp16", "dropout", "label_dropout")} == \
        {"use_fp16": False, "dropout": 0.0, "label_dropout": 0}
    for source, steps in ((run / "checkpoints" / "0000002.pt", []), (pkl, ["--num-sampling-steps", "4"])):
        result = run_script("sample.py", "--ckpt", str(source), "--output", str(tmp_path / "s.png"), *steps)
        assert result.returncode == 0, result.stderr
    # DMD2's released ImageNet generators are raw EDMPrecond state dicts: read as one step from sigma 80
    raw = tmp_path / "pytorch_model.bin"
    torch.save({"model.enc.64x64_conv.weight": torch.zeros(1), "model.out_conv.weight": torch.zeros(1)}, raw)
    query = argparse.Namespace(ckpt=str(raw), model=None, image_size=None, num_classes=None, vae=None,
                               default_vae="ema")
    _, cfg = resolve_sampling_config(query)
    assert cfg["model"] == "EDM" and cfg["generator_sigmas"] == [80.0] and cfg["model_kwargs"]["label_dim"] == 1000
    assert {k: v for k, v in cfg["model_kwargs"].items()} == EDM_IMAGENET64
    import json

    from models.edm_unet import EDMPrecond

    with torch.device("meta"):
        released = EDMPrecond(**EDM_IMAGENET64)
    keys = json.loads((Path(__file__).parent / "fixtures" / "edm_adm_keys.json").read_text())["keys"]
    assert [(k, list(v.shape)) for k, v in released.state_dict().items()] == [(k, s) for k, s in keys]


def test_edm_networks_are_built_as_dmd2_builds_them(tmp_path):
    """The teacher, the fake score and the generator of an EDM pickle recorded with use_fp16 and dropout 0.1 are
    built with use_fp16 False and dropout 0 (DMD2's edm_network.py; --use_fp16 is autocast here), and a generator
    whose checkpoint recorded use_fp16 (before this rule) still samples in fp32, as DMD2 evaluates."""
    from methods.dmd2_cli import build_method, load_teacher, parse_args
    from models.edm_unet import UNetBlock
    from models.pretrained import resolve_sampling_config

    pkl = Path(__file__).parent / "fixtures" / "edm_tiny_snapshot.pkl"
    args = parse_args(["--teacher", str(pkl)])
    t, cfg, codec = load_teacher(args, torch.device("cpu"))
    cfg.update(latent_channels=3, latent_size=cfg["image_size"])
    method = build_method(args, t, cfg, codec, lambda b: (None, None), lambda n, d: torch.zeros(n, dtype=torch.long),
                          torch.device("cpu"), 2)
    for net in (t.model, method.modules["model"], method.modules["guidance"].fake_unet):
        blocks = [m for m in net.modules() if isinstance(m, UNetBlock)]
        assert not net.use_fp16 and blocks and all(b.dropout == 0 for b in blocks)
        assert net.model.label_dropout == 0
    assert not method.model_kwargs["use_fp16"] and method.model_kwargs["dropout"] == 0

    old = tmp_path / "old-generator.pt"
    torch.save({"model": t.model.state_dict(), "model_kwargs": {**cfg["model_kwargs"], "use_fp16": True},
                "generator_sigmas": [80.0], "args": {"model": "EDM"}}, old)
    query = argparse.Namespace(ckpt=str(old), model=None, image_size=None, num_classes=None, vae=None,
                               default_vae="ema")
    assert resolve_sampling_config(query)[1]["model_kwargs"]["use_fp16"] is False


@pytest.mark.multiprocess
def test_two_gloo_processes_shard_both_networks(teacher, tmp_path):
    """--fsdp over two processes: the generator and the guidance model (the fake score's blocks, the head) sharded,
    their blocks checkpointed (--gradient_checkpointing), the generator turn reading the guidance model through its
    forward, grids from the gathered generator, and a checkpoint of whole weights that sample.py reads."""
    out = tmp_path / "fsdp"
    result = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", "train_dmd2.py",
                        "--teacher", str(teacher), "--output_path", str(out), *TINY, "--train_iters", "3",
                        "--backward_simulation", "--denoising", "--num_denoising_step", "2", "--fsdp",
                        "--gradient_checkpointing")
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = list(out.iterdir())
    assert (run / "samples" / "0000003.png").is_file()
    ckpt = load_checkpoint(run / "checkpoints" / "0000003.pt")
    single = load_checkpoint(teacher)["ema"]
    assert {k: tuple(v.shape) for k, v in ckpt["model"].items()} == {k: tuple(v.shape) for k, v in single.items()}
    sampled = run_script("sample.py", "--ckpt", str(run / "checkpoints" / "0000003.pt"), "--output",
                         str(tmp_path / "s.png"))
    assert sampled.returncode == 0, sampled.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model, flags", [("UNet-Ti", []), ("SiT-Ti/4", ["--proj-coeff", "0", "--cls", "0"])])
def test_unet_and_sit_teachers(model, flags, tmp_path):
    """A U-Net teacher (cosine schedule; the GAN head on its middle block) and a SiT teacher (velocity; pure noise at
    t = 1; the head on its tokens after block depth / 2) distil and sample like the DiT."""
    from conftest import TINY_TRAIN

    import train

    tiny = [*TINY_TRAIN]
    tiny[tiny.index("DiT-Ti/4")] = model
    train.main(train.parse_args([*tiny, *flags, "--results-dir", str(tmp_path / "t"), "--max-steps", "2",
                                 "--ckpt-every", "2", "--log-every", "2"]))
    (teacher_run,) = list((tmp_path / "t").iterdir())
    out = tmp_path / "d"
    distil(teacher_run / "checkpoints" / "0000002.pt", out, "--train_iters", "2")
    (run,) = list(out.iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "0000002.pt")
    record = ckpt["sampling_record"]
    expected = {"UNet-Ti": ("eps", "cosine", EPS_CONDITIONING_SIGMA), "SiT-Ti/4": ("velocity", "linear", float("inf"))}
    assert (record["prediction"], record.get("noise_schedule", record.get("path_type")),
            ckpt["generator_sigmas"][0]) == expected[model]
    result = run_script("sample.py", "--ckpt", str(run / "checkpoints" / "0000002.pt"), "--output",
                        str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_a_teacher_in_sits_own_time_gives_a_generator_in_that_time(tmp_path):
    """A checkpoint of SiT's own train.py (t = 1 data; its args spell the path "Linear", weights with the
    learned-sigma half) distils; the generator keeps plain SiT keys and records SiT's time, so sample.py and
    the sampling loader read it in the time its weights were trained in."""
    from models import create_model
    from models.pretrained import resolve_sampling_config

    net = create_model("SiT-Ti/4", input_size=16, in_channels=3, num_classes=10, learn_sigma=True, z_dims=[])
    sit_args = argparse.Namespace(model="SiT-Ti/4", image_size=16, num_classes=10, vae="none", path_type="Linear",
                                  prediction="velocity")
    teacher_ckpt = tmp_path / "0010000.pt"
    torch.save({"model": net.state_dict(), "ema": net.state_dict(), "opt": {}, "args": sit_args}, teacher_ckpt)
    run = distil(teacher_ckpt, tmp_path / "d", "--train_iters", "1", "--real_guidance_scale", "1")
    generator = run / "checkpoints" / "0000001.pt"
    ckpt = load_checkpoint(generator)
    assert ckpt["model_kwargs"]["time_convention"] == "sit"
    assert ckpt["model"].keys() == net.state_dict().keys()
    query = argparse.Namespace(ckpt=str(generator), model=None, image_size=None, num_classes=None, vae=None,
                               default_vae="ema", encoder_depth=None, projector_embed_dims=None, cls=None,
                               legacy=False, path_type=None)
    _, cfg = resolve_sampling_config(query)
    assert (cfg["model_kwargs"]["time_convention"], cfg["path_type"]) == ("sit", "linear")
    result = run_script("sample.py", "--ckpt", str(generator), "--output", str(tmp_path / "s.png"))
    assert result.returncode == 0, result.stderr


def test_generator_starts_from_the_teacher_unless_told_otherwise(teacher):
    """--initialie_generator (DMD2's spelling; the default): the generator and the fake score are copies of the
    teacher, fixed tables stay fixed; --no-initialie_generator: the generator is freshly initialised (DiT's own
    initialisation: its output layer starts at zero), the fake score is still the teacher's copy."""
    from methods.dmd2_cli import build_method, load_teacher, parse_args

    def build(*flags):
        args = parse_args(["--teacher", str(teacher), "--real_guidance_scale", "1", *flags])
        t, cfg, codec = load_teacher(args, torch.device("cpu"))
        cfg.update(latent_channels=3, latent_size=16)
        method = build_method(args, t, cfg, codec, lambda b: (None, None),
                              lambda n, d: torch.zeros(n, dtype=torch.long), torch.device("cpu"), 2)
        return t.model.state_dict(), method.modules["model"], method.modules["guidance"].fake_unet

    taught, generator, fake = build()
    for net in (generator, fake):
        assert all(torch.equal(taught[k], v) for k, v in net.state_dict().items())
        assert not net.pos_embed.requires_grad and net.blocks[0].attn.qkv.weight.requires_grad
    taught, generator, fake = build("--no-initialie_generator")
    assert not torch.equal(generator.final_layer.linear.weight, taught["final_layer.linear.weight"])
    assert generator.final_layer.linear.weight.abs().max() == 0
    assert all(torch.equal(taught[k], v) for k, v in fake.state_dict().items())


def test_dm_levels_span_the_step_percent_range(teacher, monkeypatch):
    """The DM loss draws its level from grid indices [min_step_percent, max_step_percent] x 1000 (DMD2's 20..980)."""
    from methods.dmd2_cli import build_method, load_teacher, parse_args

    args = parse_args(["--teacher", str(teacher), "--real_guidance_scale", "2", "--min_step_percent", "0.3",
                       "--max_step_percent", "0.31"])
    t, cfg, codec = load_teacher(args, torch.device("cpu"))
    cfg.update(latent_channels=3, latent_size=16)
    method = build_method(args, t, cfg, codec, lambda b: (None, None), lambda n, d: torch.zeros(n, dtype=torch.long),
                          torch.device("cpu"), 64)
    seen = []
    sigma = t.sigma
    monkeypatch.setattr(t, "sigma", lambda index: seen.append(index.clone()) or sigma(index))
    x = torch.randn(64, 3, 16, 16, requires_grad=True)
    method.generator_losses(method.modules["guidance"], x, torch.zeros(64, dtype=torch.long))
    drawn = torch.cat(seen)
    assert drawn.min() >= 300 and drawn.max() <= 310 and len(drawn.unique()) > 5
