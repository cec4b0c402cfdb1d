"""A run on two processes equals the same run on one: every training entry point, on the same global batch,
with the random draws of each step keyed by global sample index (``tests/equivalence.py``).

Where nothing depends on the per-process batch, every network, EMA and optimizer state after 3 steps agrees to
1e-5 (the difference's norm over the entry's tensors, relative to theirs). DMD2's GAN head at test width (a
GroupNorm of two channels a group on a 1x1 map) amplifies float32 rounding, which differs between one batch and
two halves, twenty- to a hundredfold, so runs with it agree to 1e-3 (docs/notes/distributed.md; a wrong draw or
a wrong sample moves them by 1e-2 and more). REPA-E's BatchNorms (the SiT's latent norm, the PatchGAN's) see each
process's half of the batch on CPUs, where there is no SyncBatchNorm: there every tensor that changes on one
process changes on two, the batch counts are equal and the running statistics move within 25% of each other.
DMD2's regression pretraining (``train_sd_ode.py``) agrees to 1e-4: its loss passes through a VAE decoder and VGG,
and a one-process run on 1 and on 2 threads is 3.8e-5 apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TRAIN
from equivalence import run_case

import train
from common.checkpoint import load_checkpoint
from models.vae import VAE_models, to_ldm_state_dict
from preprocessing import dataset_tools

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("quick_grids")]

# EQUIVALENCE_NPROC=N (docs/benchmarks.md: the same check on a machine's GPUs): N processes against one, 4 samples
# per process
NPROC = int(os.environ.get("EQUIVALENCE_NPROC", "2"))
BATCH = str(4 * NPROC)
STEPS = ["--max-steps", "3", "--ckpt-every", "3", "--log-every", "3"]
TRAIN = [*TINY_TRAIN, *STEPS, "--results-dir", "{out}", "--global-batch-size", BATCH]
REPAE = ["--exp-name", "run", "--output-dir", "{out}", "--num-classes", "10", "--resolution", "32",
         "--model", "SiT-Ti/1", "--vae", "tiny-f4d4", "--enc-type", "tiny-vit", "--encoder-depth", "1",
         "--batch-size", BATCH, "--no-compile", "--mixed-precision", "no", "--report-to", "none", "--num-workers", "0",
         "--max-train-steps", "3", "--checkpointing-steps", "3", "--sampling-steps", "1000", "--log-every", "3",
         "--learning-rate", "1e-3"]
DMD2 = ["--output_path", "{out}", "--dataset", "builtin", "--num_workers", "0", "--generator_lr", "1e-3",
        "--guidance_lr", "1e-3", "--warmup_step", "0", "--train_iters", "3", "--log_iters", "3", "--wandb_iters", "3",
        "--dfake_gen_update_ratio", "2"]
GAN = ["--gan_classifier", "--gen_cls_loss_weight", "3e-3", "--cls_loss_weight", "1e-2", "--diffusion_gan",
       "--diffusion_gan_max_timestep", "1000"]
DMD2_BATCH = {"1": ["--batch_size", BATCH], str(NPROC): ["--batch_size", "4"]}  # DMD2's --batch_size is per process
REPA = ["--model", "SiT-Ti/4", "--enc-type", "tiny-vit", "--encoder-depth", "1", "--proj-coeff", "0.5"]
BATCHNORM = ("repae",)  # cases with per-process batch statistics


def model(name: str) -> list[str]:
    tiny = [*TRAIN]
    tiny[tiny.index("DiT-Ti/4")] = name
    return tiny


def cases(inputs: dict) -> dict:
    teachers, vae, data = inputs["teachers"], inputs["vae"], inputs["data"]
    dmd2 = {f"dmd2-{family}": {"script": "train_dmd2", "argv": ["--teacher", str(path), *DMD2], "argv_world": DMD2_BATCH}
            for family, path in teachers.items()}
    for family in ("dit", "edm"):  # the GAN head and the diffusion GAN's draws
        dmd2[f"dmd2-{family}"]["argv"] += GAN
    dmd2["dmd2-dit"]["argv"] += ["--real_guidance_scale", "2", "--denoising", "--num_denoising_step", "2",
                                 "--backward_simulation"]
    dmd2["dmd2-sit"]["argv"] += ["--real_guidance_scale", "2"]
    dmd2["dmd2-dit-fsdp"] = {**dmd2["dmd2-dit"], "argv": [*dmd2["dmd2-dit"]["argv"], "--fsdp"]}
    # a text-to-image teacher: prompts encoded per process, unit noise, the real data's prompts for the generator's
    # inputs; without the GAN head, whose float32 rounding on this UNet's middle block alone moves a one-process run
    # by 2.3e-3 between 1 and 2 threads (the DM path agrees to 1e-5)
    sd = inputs["sd"]
    dmd2["dmd2-sd"] = {"script": "train_dmd2", "argv_world": DMD2_BATCH, "argv": [
        "--teacher", str(sd), "--train_prompt_path", str(sd / "prompts.txt"), "--real_image_path", str(sd / "laion_lmdb"),
        *[a for a in DMD2 if a not in ("--dataset", "builtin")], "--real_guidance_scale", "1.75", "--denoising",
        "--num_denoising_step", "2", "--backward_simulation"]}
    ode = {"script": "train_sd_ode", "argv_world": {"1": ["--ode_batch_size", BATCH], str(NPROC): ["--ode_batch_size", "4"]},
           "argv": ["--model_id", str(sd), "--ode_pair_path", str(inputs["pairs"]), "--output_path", "{out}",
                    "--conditioning_timestep", "399", "--generator_lr", "1e-3", "--warmup_step", "0", "--train_iters",
                    "3", "--log_iters", "3", "--wandb_iters", "3", "--grid_size", "1", "--num_workers", "0"]}
    return {
        "dit": {"script": "train", "argv": TRAIN},
        "sd-ode": ode,
        "dit-fsdp": {"script": "train", "argv": [*TRAIN, "--fsdp"]},
        "unet": {"script": "train", "argv": model("UNet-Ti")},
        "sit": {"script": "train", "argv": model("SiT-Ti/4")},
        "sit-transport": {"script": "train", "argv": [*model("SiT-Ti/4"), "--path-type", "VP", "--prediction",
                                                      "noise", "--loss-weight", "likelihood"]},
        "repa": {"script": "train", "argv": [*model("SiT-Ti/4"), *REPA]},
        "reg": {"script": "train", "argv": [*model("SiT-Ti/4"), *REPA, "--cls", "0.03"]},
        "repae": {"script": "train_repae", "argv": [*REPAE, "--dataset", "builtin", "--vae-ckpt", str(vae),
                                                    "--lpips-random"]},
        "repae-ldm": {"script": "train_ldm_only", "argv": [*REPAE, "--data-dir", str(data), "--vae-ckpt", str(vae),
                                                          "--vae-latents-name", "tiny"]},
        **dmd2,
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained_run) -> dict:
    """Teachers of four families (DiT, SiT, U-Net: 1 step of train.py; EDM: the fixture pickle; the tiny random SD
    folder with its prompts and LMDB), a tiny
    REPA-E VAE with its latent statistics, and REPA-E's layout with that VAE's cached latents."""
    import cache_latents

    folder = tmp_path_factory.mktemp("inputs")
    teachers = {"dit": trained_run / "checkpoints" / "0000020.pt",
                "edm": ROOT / "tests" / "fixtures" / "edm_tiny_snapshot.pkl"}
    for family, name in (("sit", "SiT-Ti/4"), ("unet", "UNet-Ti")):
        out = folder / family
        tiny = [*TINY_TRAIN]
        tiny[tiny.index("DiT-Ti/4")] = name
        train.main(train.parse_args([*tiny, "--results-dir", str(out), "--max-steps", "1", "--ckpt-every", "1"]))
        (teachers[family],) = out.glob("*/checkpoints/0000001.pt")
    data = folder / "data"
    dataset_tools.main(dataset_tools.parse_args(["convert", "--source", "builtin", "--max-images", "64",
                                                 "--resolution", "32x32", "--dest", str(data / "images.h5")]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), folder / "tiny.pt")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.full((1, 4, 1, 1), 0.5)},
               folder / "tiny-latents-stats.pt")
    cache_latents.main(cache_latents.parse_args([
        "--vae-arch", "tiny-f4d4", "--vae-ckpt-path", str(folder / "tiny.pt"), "--vae-latents-name", "tiny",
        "--data-dir", str(data), "--output-dir", str(data), "--pproc-batch-size", "16"]))
    from fixtures.record_run_fixtures import sd_folder

    from preprocessing import create_lmdb_iterative, generate_noise_image_pairs

    sd = sd_folder(folder / "sd")
    (folder / "prompts.txt").write_text("".join(f"prompt {c}\n" for c in "abcdefgh"))
    generate_noise_image_pairs.main(generate_noise_image_pairs.parse_args([
        "--folder", str(folder / "pairs"), "--prompt_path", str(folder / "prompts.txt"), "--model_id", str(sd),
        "--batch_size", "4", "--num_batches", "2", "--latent_resolution", "8", "--num_inference_steps", "2"]))
    create_lmdb_iterative.main(create_lmdb_iterative.parse_args(["--data_path", str(folder / "pairs"), "--lmdb_path",
                                                                 str(folder / "pairs_lmdb")]))
    return {"teachers": teachers, "vae": folder / "tiny.pt", "data": data, "sd": sd, "pairs": folder / "pairs_lmdb",
            "torch_home": piq_weights(folder / "torch")}


def piq_weights(home: Path) -> Path:
    """Random stand-ins for piq's two LPIPS weight files (train_sd_ode.py), where torch.hub looks under ``home``."""
    import torchvision

    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.vgg16().state_dict(), folder / "vgg16-397923af.pth")
        torch.save([torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)], folder / "lpips_weights.pt")
    return home


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory) -> dict:
    """Every case on two processes (one launch, in the background) and on one (in this process)."""
    table = cases(inputs)
    out = tmp_path_factory.mktemp("equivalence")
    (out / "cases.json").write_text(json.dumps(table))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests"), "TORCH_HOME": str(inputs["torch_home"])}
    env.pop("DIFFUSION_LAB_DEBUG", None)
    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
                               "tests/equivalence.py", str(out / "cases.json"), str(out / str(NPROC))], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TORCH_HOME", str(inputs["torch_home"]))  # piq's weights, for this module's runs only
            for name, case in table.items():
                run_case(case, out / "1" / name)
        log, _ = launch.communicate(timeout=900)
    finally:
        launch.kill()
    assert launch.returncode == 0, log[-4000:]
    return {1: out / "1", 2: out / str(NPROC), "cases": table}


def checkpoint(folder: Path) -> dict:
    (path,) = folder.glob("**/checkpoints/0000003.pt")
    return load_checkpoint(path)


def tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every floating tensor of a (nested) checkpoint entry by a dotted name."""
    if torch.is_tensor(state):
        return {prefix: state.double()} if state.is_floating_point() else {}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {name: t for k, v in items for name, t in tensors(v, f"{prefix}.{k}" if prefix else str(k)).items()}


def entries(ckpt: dict) -> list[str]:
    """The networks, EMAs and optimizer states of a checkpoint."""
    return [k for k, v in ckpt.items() if isinstance(v, dict) and k not in ("args", "data", "model_kwargs", "sampling_record")]




@pytest.mark.parametrize("case", ["dit", "sd-ode", "dit-fsdp", "unet", "sit", "sit-transport", "repa", "reg", "repae-ldm", "dmd2-dit",
                                  "dmd2-dit-fsdp", "dmd2-sit", "dmd2-unet", "dmd2-edm", "dmd2-sd"])
def test_two_processes_train_as_one(runs, case):
    one, two = checkpoint(runs[1] / case), checkpoint(runs[2] / case)
    assert one["steps"] == two["steps"] == 3 and entries(one) == entries(two)
    gan = {"--gan_classifier", "--cls_on_clean_image"} & set(runs["cases"][case]["argv"])
    # the regression loss reaches the UNet through the VAE decoder and VGG: the same one-process run on 1 and on 2
    # threads already differs by 3.8e-5
    limit = 1e-3 if gan else 1e-4 if case == "sd-ode" else 1e-5
    for key in entries(one):
        a, b = tensors(one[key]), tensors(two[key])
        assert a.keys() == b.keys(), key
        gap = sum(float((a[k] - b[k]).norm()) ** 2 for k in a) ** 0.5 / sum(float(a[k].norm()) ** 2 for k in a) ** 0.5
        worst = max(a, key=lambda k: float((a[k] - b[k]).norm()))
        assert gap <= limit, f"{case}: {key} differs by {gap:.1e} of its norm on two processes (most in {worst})"


@pytest.mark.parametrize("case", BATCHNORM)
def test_batch_statistics_move_alike_on_one_and_two_processes(runs, case):
    one, two = checkpoint(runs[1] / case), checkpoint(runs[2] / case)
    start = torch.load(runs[1] / case / "initial.pt", weights_only=True)
    for key, initial in start.items():
        for name, before in initial.items():
            a, b = one[key][name], two[key][name]
            if name.endswith("num_batches_tracked"):
                assert int(a) == int(b) > 0, f"{key}.{name}: {int(a)} batches on one process, {int(b)} on two"
            elif not torch.equal(a, before):
                assert not torch.equal(b, before), f"{key}.{name} changed on one process, not on two"
            if name.endswith(("running_mean", "running_var")):
                gap = float(((b - before) - (a - before)).norm() / (a - before).norm())
                assert gap <= 0.25, f"{key}.{name}: the running statistics moved {gap:.0%} apart"
