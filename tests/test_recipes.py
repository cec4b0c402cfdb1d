"""train.sh and eval.sh: every recipe hands train.py / generate.py flags they accept, with the papers' values."""

import os
import subprocess

import pytest
from conftest import ROOT

import generate
import train
import train_dmd2
import train_ldm_only
import train_repae


def run_recipe(script, tmp_path, full_argv=False, **env):
    fake = tmp_path / "python"  # records its command line instead of launching anything
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHON": str(fake), "RECORD": str(tmp_path / "argv"), **env})
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    if full_argv:
        return argv
    scripts = ("train.py", "train_repae.py", "train_ldm_only.py", "train_dmd2.py") if script == "train.sh" \
        else ("generate.py",)
    start = next(i for i, a in enumerate(argv) if a in scripts)
    return argv[start + 1:]


@pytest.mark.parametrize("recipe, expected", [
    ("reg", dict(model="SiT-XL/2", enc_type="dinov2-vit-b", encoder_depth=8, proj_coeff=0.5, cls=0.03,
                 global_batch_size=256, mixed_precision="fp16", allow_tf32=True, exp_name="linear-dinov2-b-enc8-reg")),
    ("repa", dict(model="SiT-B/2", encoder_depth=4, proj_coeff=0.5, cls=0.0, max_steps=400_000)),
    ("dit", dict(model="DiT-XL/2", global_batch_size=256, lr=1e-4, ema_decay=0.9999)),
])
def test_train_sh_recipes_parse_with_the_papers_values(recipe, expected, tmp_path):
    args = train.parse_args(run_recipe("train.sh", tmp_path, RECIPE=recipe, DATA_DIR="data"))
    assert args.data_path == "data"
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("recipe, command, expected", [
    ("repae", train_repae, dict(model="SiT-XL/2", vae="f8d4", vae_ckpt="pretrained/sdvae/sdvae-f8d4.pt",
                                disc_pretrained_ckpt="pretrained/sdvae/sdvae-f8d4-discriminator-ckpt.pt",
                                encoder_depth=8, proj_coeff=0.5, vae_align_proj_coeff=1.5, bn_momentum=0.1,
                                global_batch_size=256, max_steps=400_000, mixed_precision="fp16",
                                exp_name="sit-xl-dinov2-b-enc8-repae-sdvae")),
    ("repae-ldm", train_ldm_only, dict(model="SiT-XL/1", vae="f16d32", vae_latents_name="e2e-vavae-400k",
                                       max_steps=4_000_000, proj_coeff=0.5)),
])
def test_train_sh_repae_recipes_parse_with_the_papers_values(recipe, command, expected, tmp_path):
    args = command.parse_args(run_recipe("train.sh", tmp_path, RECIPE=recipe, DATA_DIR="data"))
    assert args.data_path == "data"
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("recipe, env, expected", [
    ("dmd2-imagenet", {}, dict(teacher="edm-imagenet-64x64-cond-adm.pkl", real_image_path="data", batch_size=40,
                               generator_lr=2e-6, guidance_lr=2e-6, dfake_gen_update_ratio=5, gan_classifier=True,
                               cls_loss_weight=1e-2, gen_cls_loss_weight=3e-3, diffusion_gan=True,
                               diffusion_gan_max_timestep=1000, use_fp16=True, seed=10, real_guidance_scale=None,
                               resolution=64, label_dim=1000, delete_ckpts=True)),
    ("dmd2-sd15", dict(TEACHER="sd15", PROMPTS="captions.pkl"),
     dict(teacher="sd15", train_prompt_path="captions.pkl", batch_size=32, generator_lr=1e-5, guidance_lr=1e-5,
          real_guidance_scale=1.75, dfake_gen_update_ratio=10, use_fp16=True, seed=10, gan_classifier=False,
          resolution=512, latent_resolution=64, grid_size=2, log_loss=True, gradient_checkpointing=True)),
])
def test_train_sh_dmd2_recipes_parse_with_the_papers_values(recipe, env, expected, tmp_path):
    args = train_dmd2.parse_args(run_recipe("train.sh", tmp_path, RECIPE=recipe, DATA_DIR="data", **env))
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("recipe, expected", [
    ("dmd2-imagenet", dict(class_balanced=True, global_seed=10, per_proc_batch_size=128, sampler=None,
                           cfg_scale=None)),
    ("repae", dict(sampler="sde", num_sampling_steps=250, cfg_scale=2.2, guidance_high=0.65)),
    ("repae-ldm", dict(sampler="sde", num_sampling_steps=250, cfg_scale=2.5, guidance_high=0.75)),
    ("reg", dict(sampler="sde", num_sampling_steps=250, cfg_scale=2.3, cls_cfg_scale=2.3, guidance_high=0.85)),
    ("repa", dict(sampler="sde", num_sampling_steps=250, cfg_scale=1.8, guidance_high=0.7, cls_cfg_scale=None)),
    ("dit", dict(sampler="ddpm", num_sampling_steps=250, cfg_scale=1.5, cls_cfg_scale=None, guidance_high=None)),
])
def test_eval_sh_recipes_parse_with_the_papers_values(recipe, expected, tmp_path):
    args = generate.parse_args(run_recipe("eval.sh", tmp_path, RECIPE=recipe, CKPT="c.pt", REF_BATCH="ref.npz"))
    assert args.ckpt == "c.pt" and args.ref_batch == "ref.npz" and args.num_fid_samples == 50_000
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("recipe", ["reg", "repa"])
def test_train_sh_launches_one_gpu_without_multi_gpu(recipe, tmp_path):
    one = run_recipe("train.sh", tmp_path, full_argv=True, RECIPE=recipe, DATA_DIR="data", NUM_GPUS="1")
    assert "--multi_gpu" not in one and one[one.index("--num_processes") + 1] == "1"
    eight = run_recipe("train.sh", tmp_path, full_argv=True, RECIPE=recipe, DATA_DIR="data", NUM_GPUS="8")
    assert "--multi_gpu" in eight and eight[eight.index("--num_processes") + 1] == "8"


def test_recipes_name_the_missing_variable():
    proc = subprocess.run(["bash", str(ROOT / "train.sh")], capture_output=True, text=True, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "DATA_DIR"})
    assert proc.returncode != 0 and "set DATA_DIR" in proc.stderr
