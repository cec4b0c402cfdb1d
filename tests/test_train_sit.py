"""train.py with SiT / REPA / REG on the built-in dataset and REG's data layout; generate.py and the
samplers on the checkpoints it writes."""

import json

import numpy as np
import pytest
import torch
from conftest import run_script

import train
from common.cli import run_cli

TINY_SIT = ["--dataset", "builtin", "--model", "SiT-Ti/4", "--image-size", "16", "--num-classes", "10",
            "--vae", "none", "--global-batch-size", "16", "--num-workers", "0", "--lr", "1e-3"]
REG = ["--enc-type", "tiny-vit", "--proj-coeff", "0.5", "--cls", "0.03"]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory, quick_grids):
    """A tiny REG run: SiT-Ti/4 aligned to the tiny random ViT, 80 steps, named as REPA names runs."""
    results = tmp_path_factory.mktemp("exps")
    train.main(train.parse_args([*TINY_SIT, *REG, "--output-dir", str(results), "--exp-name", "reg",
                                 "--max-train-steps", "80", "--log-every", "10", "--checkpointing-steps", "40"]))
    return results / "reg"


def test_reg_training_lowers_all_three_losses(reg_run):
    records = read_metrics(reg_run)
    first, last = records[0], records[-1]
    for key in ("denoise", "proj", "cls"):
        assert last[key] < first[key], (key, [r[key] for r in records])
    assert last["proj"] < first["proj"] - 0.05  # the projector really aligns (-cos falls)
    assert all("grad_norm" in r for r in records)  # REPA clips at 1.0 and logs the norm


def test_reg_checkpoint_holds_args_and_the_class_token_weights(reg_run):
    assert sorted(p.name for p in (reg_run / "checkpoints").iterdir()) == ["0000040.pt", "0000080.pt"]
    ckpt = torch.load(reg_run / "checkpoints" / "0000080.pt", weights_only=False)
    assert set(ckpt) >= {"model", "ema", "opt", "args", "steps"}
    assert ckpt["args"]["enc_type"] == "tiny-vit" and ckpt["args"]["cls"] == 0.03
    assert "cls_projectors2.weight" in ckpt["ema"] and "projectors.0.4.weight" in ckpt["ema"]
    assert (reg_run / "samples" / "0000080.png").is_file()


@pytest.mark.slow
def test_resume_step_continues_the_named_run_identically(tmp_path, quick_grids):
    common = [*TINY_SIT, *REG, "--output-dir", str(tmp_path), "--log-every", "1", "--checkpointing-steps", "2",
              "--global-batch-size", "4"]
    train.main(train.parse_args([*common, "--exp-name", "a", "--max-train-steps", "4"]))
    train.main(train.parse_args([*common, "--exp-name", "b", "--max-train-steps", "2"]))
    train.main(train.parse_args([*common, "--exp-name", "b", "--max-train-steps", "4", "--resume-step", "2"]))
    a = torch.load(tmp_path / "a" / "checkpoints" / "0000004.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoints" / "0000004.pt", weights_only=False)
    for name, value in a["ema"].items():
        assert torch.equal(value, b["ema"][name]), name
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]


@pytest.mark.slow
def test_a_named_run_is_never_overwritten(reg_run):
    proc = run_script("train.py", *TINY_SIT, *REG, "--output-dir", str(reg_run.parent), "--exp-name", "reg",
                      "--max-train-steps", "2")
    assert proc.returncode == 2
    assert "--resume-step 80" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--model", "DiT-Ti/4", "--enc-type", "tiny-vit"], "--enc-type does not apply to DiT-Ti/4"),
    (["--noise-schedule", "cosine"], "--noise-schedule does not apply to SiT-Ti/4"),
    (["--encoder-depth", "3"], "encoder_depth 3 must be between 1 and depth 2"),
    (["--enc-type", "nope-vit-b"], "unknown encoder 'nope-vit-b'"),
    (["--model", "SiT-Ti/2"], "tiny-vit gives 16 patch tokens at 16 px but SiT-Ti/2 has 64"),
    (["--resume-step", "5"], "--resume-step needs --exp-name"),
])
def test_wrong_family_flags_and_encoder_mismatches_are_one_line_errors(tmp_path, flags, message, capsys):
    args = [*TINY_SIT, *REG, "--results-dir", str(tmp_path), "--max-steps", "1", *flags]  # later flags win
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, train.parse_args(args), (train.NonFiniteLoss,))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_plain_sit_on_reg_layout_trains_on_vae_latents(tiny_vae, tmp_path):
    from preprocessing.dataset_tools import main as tools
    from preprocessing.dataset_tools import parse_args as tool_args

    data = tmp_path / "data"
    tools(tool_args(["convert", "--source", "builtin", "--max-images", "16", "--resolution", "32x32",
                     "--dest", str(data / "imagenet_256_vae")]))
    tools(tool_args(["encode", "--source", str(data / "imagenet_256_vae"), "--dest", str(data / "vae-sd"),
                     "--vae", str(tiny_vae), "--batch-size", "8"]))
    train.main(train.parse_args(["--model", "SiT-Ti/1", "--data-dir", str(data), "--resolution", "32",
                                 "--num-classes", "10", "--vae", str(tiny_vae), "--proj-coeff", "0", "--cls", "0",
                                 "--batch-size", "8", "--num-workers", "0", "--max-train-steps", "3",
                                 "--output-dir", str(tmp_path / "exps"), "--exp-name", "sit"]))
    run = tmp_path / "exps" / "sit"
    assert "data: repa (16 items)" in (run / "log.txt").read_text()
    ckpt = torch.load(run / "checkpoints" / "0000003.pt", weights_only=False)
    assert ckpt["ema"]["x_embedder.proj.weight"].shape[1] == 4  # trained on the 4-channel latents
    assert not any(k.startswith("projectors.") for k in ckpt["ema"])  # plain SiT: no projector


@pytest.mark.slow
def test_sample_py_draws_a_reg_grid_with_the_sde(reg_run, tmp_path):
    out = tmp_path / "grid.png"
    proc = run_script("sample.py", "--ckpt", str(reg_run / "checkpoints" / "0000080.pt"), "--num-sampling-steps",
                      "4", "--class-labels", "0", "1", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()
    proc = run_script("sample.py", "--ckpt", str(reg_run / "checkpoints" / "0000080.pt"), "--sampler", "ddim",
                      "--num-sampling-steps", "4", "--heun", "--output", str(out))
    assert proc.returncode == 2 and "--heun is a step of the ODE sampler" in proc.stderr


@pytest.mark.slow
def test_generate_checks_projector_dims_and_class_token_size(reg_run, tmp_path):
    ckpt = str(reg_run / "checkpoints" / "0000080.pt")
    proc = run_script("generate.py", "--ckpt", ckpt, "--projector-embed-dims", "768", "--num-fid-samples", "2")
    assert proc.returncode == 2 and "--projector-embed-dims 768 does not match the checkpoint" in proc.stderr
    proc = run_script("generate.py", "--ckpt", ckpt, "--cls", "768", "--num-fid-samples", "2")
    assert proc.returncode == 2 and "--cls 768 does not match the checkpoint's class token size" in proc.stderr


@pytest.mark.multiprocess
def test_generate_through_two_gloo_processes_writes_exactly_n_images(reg_run, tmp_path):
    from evaluations.proxy import ProxyClassifier, classifier_path, save_proxy_classifier

    cache = tmp_path / "cache"  # an untrained classifier: the scoring path is what is tested, not its value
    save_proxy_classifier(ProxyClassifier(10), classifier_path(10, cache))
    proc = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547", "generate.py",
                      "--ckpt", str(reg_run / "checkpoints" / "0000080.pt"), "--mode", "sde", "--num-steps", "3",
                      "--cfg-scale", "2.3", "--cls-cfg-scale", "2.3", "--guidance-high", "0.85",
                      "--num-fid-samples", "7", "--per-proc-batch-size", "2", "--sample-dir", str(tmp_path),
                      "--proxy", timeout=600, env={"DIFFUSION_LAB_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (npz,) = [p for p in tmp_path.glob("*.npz") if p.with_suffix("").is_dir()]  # beside its PNG folder
    assert "sde3" in npz.name and "0.0-0.85-cls2.3" in npz.name
    regs = list(tmp_path.glob("*-cfg-2.3-seed-0-sde-0.85-2.3.npz"))  # the copy under REG's own name
    assert len(regs) == 1 and np.array_equal(np.load(regs[0])["arr_0"], np.load(npz)["arr_0"])
    with np.load(npz) as f:
        assert f["arr_0"].shape == (7, 16, 16, 3) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].shape == (7,)
    assert len(list(npz.with_suffix("").glob("*.png"))) == 8  # 2 batches of 2 x 2 processes, the npz keeps 7
    metrics = json.loads(npz.with_suffix(".json").read_text())
    assert 0 <= metrics["proxy_class_accuracy"] <= 1 and metrics["proxy_fd"] >= 0
    assert "Proxy class accuracy" in proc.stdout


def test_scripts_default_to_the_papers_samplers():
    """generate.py and sample.py: REPA's ODE, the SDE for REG, DDPM for DiT; sample_ddp.py: the SDE for SiT."""
    import generate
    import sample
    import sample_ddp
    from evaluations.sampling_cli import choose_sampler

    dit = {"model": "DiT-Ti/4", "model_kwargs": {}}
    repa = {"model": "SiT-Ti/4", "model_kwargs": {"z_dims": [32], "cls_token_dim": None}}
    reg = {"model": "SiT-Ti/4", "model_kwargs": {"z_dims": [32], "cls_token_dim": 32}}
    for args in (generate.parse_args(["--ckpt", "c.pt"]), sample.parse_args([])):
        assert [choose_sampler(args, cfg) for cfg in (dit, repa, reg)] == ["ddpm", "ode", "sde"]
    args = sample_ddp.parse_args([])
    assert [choose_sampler(args, cfg) for cfg in (dit, repa, reg)] == ["ddpm", "sde", "sde"]
