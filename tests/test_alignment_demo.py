"""`make demo-repa` and `make demo-repae` (issue 28): the methods side by side at one budget, their report's
verdicts, and the recipes as the Makefile runs them (docs/notes/alignment-demo.md holds the measured numbers)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluations import repa_report

ROOT = Path(__file__).resolve().parent.parent


def make_lines(target: str, *variables: str) -> list[str]:
    out = subprocess.run(["make", "-n", "--no-print-directory", target, "NEEDS=", "PYTHON=python", *variables],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [" ".join(line.split()) for line in out.replace("\\\n", " ").splitlines()]


def write_run(folder: Path, accuracies: dict[int, float], fd: float = 50.0) -> Path:
    folder.mkdir(parents=True)
    records = [{"step": s, "class_accuracy": a, "proxy_fd": fd - s / 100, "samples": 1000, "cfg_scale": 4.0,
                "sampler": "sde25", "real_class_accuracy": 1.0, "real_proxy_fd": 0.1} for s, a in accuracies.items()]
    (folder / "proxy_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def method(tmp_path: Path, name: str, finals: list[float]) -> str:
    runs = [write_run(tmp_path / f"{name}-{k}", {500: 0.2, 1000: a}) for k, a in enumerate(finals)]
    return f"{name}=" + ",".join(map(str, runs))


def test_the_report_says_which_methods_beat_the_baseline_in_either_sense(tmp_path):
    """Every seed above every baseline seed, or a mean gap above two standard errors; otherwise not."""
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"simclr-builtin": 0.928, "random init": 0.32}))
    repa_report.main(repa_report.parse_args([
        "--out", str(tmp_path / "out"), "--encoder-probe", str(probe),
        "--method", method(tmp_path, "base", [0.40, 0.42, 0.44]),
        "--method", method(tmp_path, "every", [0.45, 0.46, 0.47]),  # every seed above: beats
        "--method", method(tmp_path, "gap", [0.43, 0.60, 0.61]),  # overlaps, gap 0.127 > 2 SE 0.119: beats
        "--method", method(tmp_path, "close", [0.41, 0.45, 0.46])]))  # overlaps, gap 0.02 < 2 SE: does not
    report = (tmp_path / "out" / "report.md").read_text()
    lines = {line.split(":")[0]: line for line in report.splitlines() if line.startswith("- ")}
    assert "yes -> **beats**" in lines["- every"]
    assert "gap +0.127" in lines["- gap"] and "no -> **beats**" in lines["- gap"]
    assert "**does not beat**" in lines["- close"]
    assert "| base | 0.200 ± 0.000 | 0.420 ± 0.012 | 0.400, 0.420, 0.440 |" in report
    assert "simclr-builtin 0.928, random init 0.320" in report and "sampler sde25" in report
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


def test_the_report_refuses_runs_it_cannot_compare(tmp_path):
    a = write_run(tmp_path / "a", {500: 0.2, 1000: 0.3})
    b = write_run(tmp_path / "b", {500: 0.2, 800: 0.3})
    with pytest.raises(ValueError, match="seeds were scored at different steps"):
        repa_report.main(repa_report.parse_args(["--out", str(tmp_path / "o"), "--method", f"m={a},{b}"]))
    with pytest.raises(ValueError, match="methods were scored at different steps"):
        repa_report.main(repa_report.parse_args(["--out", str(tmp_path / "o"), "--method", f"m={a}",
                                                 "--method", f"n={b}"]))
    with pytest.raises(ValueError, match="proxy_metrics.jsonl is missing: train the run with --eval-every"):
        repa_report.main(repa_report.parse_args(["--out", str(tmp_path / "o"), "--method", f"m={tmp_path}"]))


def test_demo_repa_trains_three_methods_alike_over_three_seeds(tmp_path):
    """Nine train.py runs that differ only in the method's flags, the seed and the name; the encoder is trained
    (or found) once before the runs start side by side, and every seed is scored on 1,000 samples."""
    import train

    lines = make_lines("demo-repa", f"REPA_DIR={tmp_path}")  # no finished runs there for make to skip
    runs = [shlex.split(line) for line in lines if "train.py" in line]
    assert len(runs) == 9
    assert lines.index(next(line for line in lines if "methods.ssl_encoder" in line)) < lines.index(
        next(line for line in lines if "train.py" in line))
    parsed = {run[-1]: vars(train.parse_args(run[run.index("train.py") + 1:])) for run in runs}
    method_keys = {"enc_type", "proj_coeff", "cls", "global_seed", "exp_name"}
    base = {k: v for k, v in parsed["sit-seed0"].items() if k not in method_keys}
    for name, args in parsed.items():
        assert {k: v for k, v in args.items() if k not in method_keys} == base, name
        assert args["global_seed"] == int(name[-1]) and args["eval_samples"] >= 1000
        assert args["eval_cfg_scale"] == 1  # scored without guidance, as REPA's and REG's headline numbers
    assert parsed["sit-seed1"]["proj_coeff"] == 0 and parsed["sit-seed1"]["enc_type"] is None
    assert parsed["repa-seed1"]["enc_type"] == "simclr-builtin" and parsed["repa-seed1"]["proj_coeff"] == 0.5
    assert parsed["repa-seed1"]["cls"] == 0
    assert parsed["reg-seed2"]["enc_type"] == "simclr-builtin" and parsed["reg-seed2"]["cls"] == 0.03
    assert base["model"] == "SiT-Demo/4" and base["eval_every"] < base["max_steps"]  # a curve, not one point


def test_demo_repae_runs_on_repaes_footing(tmp_path):
    """Equal learning rates for the three networks, the pretrained discriminator handed on, the GAN-off variant
    differing in its loss alone, alignment to simclr-builtin, and the drop-in run on the tuned VAE's latents."""
    import train_ldm_only
    import train_repae

    lines = make_lines("demo-repae", f"REPAE_DIR={tmp_path}")
    pretrain = next(line for line in lines if "pretrain_vae.py" in line)
    assert "--loss-cfg-path configs/demo_pretrain_l1_kl_gan.yaml" in pretrain

    def args_of(name, module, script):
        line = shlex.split(next(line for line in lines if line.endswith(f"--exp-name {name}")))
        return vars(module.parse_args(line[line.index(script) + 1:]))

    e2e, no_gan = args_of("e2e", train_repae, "train_repae.py"), args_of("e2e-no-gan", train_repae, "train_repae.py")
    frozen, drop_in = (args_of(n, train_ldm_only, "train_ldm_only.py") for n in ("frozen", "drop-in"))
    assert e2e["lr"] == e2e["vae_learning_rate"] == e2e["disc_learning_rate"] == 1e-4
    assert e2e["disc_pretrained_ckpt"].endswith("tiny-vae/tiny-vae-discriminator-ckpt.pt")
    assert {k for k in e2e if e2e[k] != no_gan[k]} == {"loss_cfg_path", "exp_name"}
    assert "discriminator_weight: 0.0" in (ROOT / no_gan["loss_cfg_path"]).read_text()
    for args in (e2e, frozen, drop_in):
        assert args["enc_type"] == "simclr-builtin" and args["lr"] == 1e-4
    shared = {k for k in frozen if k not in ("exp_name", "vae_ckpt", "vae_latents_name")}
    assert {k: frozen[k] for k in shared} == {k: drop_in[k] for k in shared}
    assert {k: frozen[k] for k in shared & set(e2e)} == {k: e2e[k] for k in shared & set(e2e)}
    assert drop_in["vae_ckpt"].endswith("e2e-vae/e2e-vae.pt") and drop_in["vae_latents_name"] == "e2e-vae"
    assert any("save_vae_weights.py --repae-ckpt" in line and "e2e/checkpoints" in line for line in lines)


def own_cache(tmp_path: Path) -> dict:
    """A cache of the test's own holding a 20-step simclr-builtin (and the session's proxy classifier when there
    is one): the demos run as a user's would, without the encoder's 8 minutes."""
    from methods import ssl_encoder
    from models import hub
    from models.encoders import ENCODERS

    cache = tmp_path / "cache"
    (cache / "encoders").mkdir(parents=True)
    session = hub.cache_dir()
    for name in ("proxy_classifier_v1.pt",):
        if (session / name).is_file():
            shutil.copy(session / name, cache / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssl_encoder, "STEPS", 20)
        mp.setattr(ssl_encoder, "IMAGES", 1000)
        mp.setattr(ssl_encoder, "BATCH", 32)
        import torch

        torch.save(ssl_encoder.train(), cache / "encoders" / ENCODERS["simclr-builtin"].files[0])
    return {**os.environ, hub.CACHE_ENV: str(cache)}


@pytest.mark.slow
def test_demo_repa_runs_end_to_end(tmp_path):
    out = tmp_path / "demo-repa"
    proc = subprocess.run(["make", "--no-print-directory", "demo-repa", "NEEDS=", f"PYTHON={sys.executable}",
                           f"REPA_DIR={out}", "REPA_STEPS=4", "REPA_EVAL_EVERY=2", "REPA_SEEDS=1",
                           "REPA_EVAL_SAMPLES=10", "REPA_JOBS=2"], cwd=ROOT, env=own_cache(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| SiT |" in report and "| REG |" in report and "- REPA: gap" in report and "step 2" in report
    assert json.loads((out / "encoder_probe.json").read_text()).keys() == {"simclr-builtin", "random init",
                                                                         "raw pixels"}
    assert (out / "curves.png").is_file() and (out / "reg-seed1" / "eval_samples.png").is_file()


@pytest.mark.slow
def test_demo_repae_runs_end_to_end(tmp_path):
    out = tmp_path / "demo-repae"
    proc = subprocess.run(["make", "--no-print-directory", "demo-repae", "NEEDS=", f"PYTHON={sys.executable}",
                           f"REPAE_DIR={out}", "REPAE_STEPS=2", "REPAE_PRETRAIN_STEPS=2", "REPAE_IMAGES=64",
                           "REPAE_SAMPLES=20"], cwd=ROOT, env=own_cache(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["start VAE", "e2e", "e2e-no-gan", "frozen", "drop-in"]
    assert all(row.split("|")[4].strip() for row in rows[1:])  # each run scored
    assert (out / "pretrained" / "tiny-vae" / "tiny-vae-discriminator-ckpt.pt").is_file()
    assert (out / "pretrained" / "e2e-vae" / "e2e-vae.pt").is_file()
