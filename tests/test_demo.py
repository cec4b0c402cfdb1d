"""`make demo` as a newcomer meets it: from an empty cache, every file the README promises, numbers explained."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script
from PIL import Image

from imagedata.procedural import render_batch, to_tensor

# docs/running.md, "Outputs": what a `make demo` run folder holds.
PROMISED = ["log.txt", "args.json", "metrics.jsonl", "loss.png", "samples/0000004.png", "checkpoints/0000002.pt",
            "checkpoints/0000004.pt", "proxy_metrics.jsonl", "proxy_metrics.json", "eval_samples.png"]
SHORT = ["--max-steps", "4", "--ckpt-every", "2", "--log-every", "2", "--eval-every", "4", "--eval-samples", "20",
         "--eval-sampling-steps", "2"]


def make_flags(target: str) -> list[str]:
    """The train.py flags of a Makefile target, as `make` would run them."""
    line = subprocess.run(["make", "-n", "--no-print-directory", target, "NEEDS=", "PYTHON=python"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == ["python", "train.py"], line
    return argv[2:]


@pytest.mark.slow
@pytest.mark.first_use
def test_demo_from_an_empty_cache_writes_every_promised_file(tmp_path):
    cache = Path(os.environ["DIFFUSION_LAB_CACHE"])
    assert not cache.exists() or not any(cache.iterdir()), "this test must meet the session's cache empty"
    proc = run_script("train.py", *make_flags("demo"), "--results-dir", str(tmp_path), *SHORT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the proxy classifier" in proc.stderr  # trained on first use, inside the evaluation
    run = tmp_path / "000-DiT-Demo-4"
    missing = [name for name in PROMISED if not (run / name).is_file()]
    assert not missing, missing
    width, height = Image.open(run / "eval_samples.png").size
    assert width >= 512 and height >= 10 * 2 * 16  # one row per class, each image enlarged
    last = proc.stdout.strip().splitlines()[-1]
    assert str(run / "proxy_metrics.json") in last and "class accuracy" in last and "chance 0.10" in last
    assert "real images" in last and "lower is better" in last
    assert (cache / "proxy_classifier_v1.pt").is_file()  # later tests find it there


@pytest.mark.parametrize("target, run_name, sampler, differ", [
    ("demo-sit", "000-SiT-Demo-4", "sde2", {"model", "proj_coeff", "cls"}),
    ("demo-unet", "000-UNet-Ti", "ddpm2", {"model", "lr"}),
])
@pytest.mark.slow
def test_the_other_demos_train_and_score_with_the_same_budget(target, run_name, sampler, differ, tmp_path):
    """`make demo-sit` and `make demo-unet`: the demo's flags but for the model (and the U-Net's learning rate)."""
    import json

    import train

    args, demo = train.parse_args(make_flags(target)), train.parse_args(make_flags("demo"))
    assert {k for k, v in vars(args).items() if v != getattr(demo, k)} == differ
    train.main(train.parse_args([*make_flags(target), "--results-dir", str(tmp_path), *SHORT]))
    result = json.loads((tmp_path / run_name / "proxy_metrics.json").read_text())
    assert result["step"] == 4 and result["samples"] == 20 and result["cfg_scale"] == 4.0
    assert result["sampler"] == sampler  # the README's demo table: Euler-Maruyama for the SiT, DDPM for the U-Net


def test_proxy_evaluation_scores_real_images_of_the_requested_classes_highly(tmp_path, monkeypatch, quick_proxy):
    """A "model" that returns real built-in images of exactly the classes asked for scores near 1.0; images of
    any other class would score near 0. Scored by the reduced classifier (the real one: the slow demo tests)."""
    import evaluations.proxy as proxy
    import training.visual as visual
    from models.vae import load_vae

    monkeypatch.setattr(proxy, "get_proxy_classifier", lambda *args, **kwargs: quick_proxy[0])
    monkeypatch.setattr(proxy, "real_image_scores", proxy.real_image_scores.__wrapped__)  # nothing cached of it

    def real_images(model, noise, labels, **kwargs):
        index = labels.cpu().numpy() + 10 * np.arange(len(labels))  # image i of the set has class i % 10
        return to_tensor(render_batch(index, seed=99, resolution=16))

    monkeypatch.setattr(visual, "generate", real_images)
    result = visual.evaluate_builtin(torch.nn.Identity(), load_vae("none", "cpu"), 3, 16, 10, "cpu", tmp_path, 1,
                                     num_samples=100, sampling_steps=2)
    assert result["class_accuracy"] >= 0.9 and result["proxy_fd"] < 10 * max(result["real_proxy_fd"], 1.0)


@pytest.mark.slow
def test_the_text_to_image_demo_runs_dmd2s_whole_path(tmp_path):
    """`make demo-dmd2-t2i` for 2 steps: the random tiny model's latents LMDB, a DMD2 run in both checkpoint layouts,
    the LoRA file, prompt samples from it and from sample_ddp.py, every checkpoint scored, and a report that says the
    pictures come from random weights."""
    import json

    out = tmp_path / "t2i"
    proc = subprocess.run(["make", "--no-print-directory", "demo-dmd2-t2i", "NEEDS=", f"PYTHON={sys.executable}",
                           "T2I_STEPS=2", "T2I_EVAL=20", f"T2I_DIR={out}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "runs" / "four-step-lora"
    for path in ("samples.png", "dmd2_lora.safetensors", "latents_lmdb/data.mdb", "report.md"):
        assert (out / path).is_file(), path
    assert (run / "checkpoint_model_000002" / "pytorch_model.bin").is_file() and len(list((out / "samples").glob(
        "*.npz"))) == 1
    stats = json.loads((run / "stats.json").read_text())
    assert len(stats) == 2 and all(v["proxy_fd"] > 0 for v in stats.values())
    assert "random weights" in (out / "report.md").read_text()
