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


def run_recipe(script, tmp_path, full_argv=False, stderr=None, **env):
    fake = tmp_path / "python"  # records its command line instead of launching anything
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHON": str(fake), "RECORD": str(tmp_path / "argv"), **env})
    assert proc.returncode == 0, proc.stderr
    if stderr is not None:
        stderr.append(proc.stderr)
    argv = (tmp_path / "argv").read_text().splitlines()
    if full_argv:
        return argv
    scripts = ("train.py", "train_repae.py", "train_ldm_only.py", "train_dmd2.py", "train_sd_ode.py") \
        if script == "train.sh" else ("generate.py",)
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
    ("dmd2-sd15", dict(TEACHER="sd15", PROMPTS="captions.pkl", MASTER_ADDR="10.0.0.1"),
     dict(teacher="sd15", train_prompt_path="captions.pkl", batch_size=32, generator_lr=1e-5, guidance_lr=1e-5,
          real_guidance_scale=1.75, dfake_gen_update_ratio=10, use_fp16=True, seed=10, gan_classifier=False,
          resolution=512, latent_resolution=64, grid_size=2, log_loss=True, gradient_checkpointing=True)),
    ("dmd2-sd15-gan", dict(PROMPTS="captions.pkl", CKPT_ONLY="stage1/checkpoint_model_039000", NNODES="1"),
     dict(teacher="runwayml/stable-diffusion-v1-5", generator_lr=5e-7, cls_on_clean_image=True, gen_cls_loss=True,
          gen_cls_loss_weight=1e-3, guidance_cls_loss_weight=1e-2, diffusion_gan=True, diffusion_gan_max_timestep=1000,
          ckpt_only_path="stage1/checkpoint_model_039000", dfake_gen_update_ratio=10, batch_size=256)),
    ("dmd2-sdxl", dict(PROMPTS="captions.pkl", MASTER_ADDR="10.0.0.1"),
     dict(teacher="stabilityai/stable-diffusion-xl-base-1.0", sdxl=True, fsdp=True, batch_size=2, generator_lr=5e-7,
          real_guidance_scale=8.0, dfake_gen_update_ratio=5, cls_on_clean_image=True, gen_cls_loss=True,
          gen_cls_loss_weight=5e-3, guidance_cls_loss_weight=1e-2, diffusion_gan=True, denoising=True,
          num_denoising_step=4, denoising_timestep=1000, backward_simulation=True, resolution=1024,
          latent_resolution=128, generator_lora=False, use_fp16=True)),
    ("dmd2-sdxl-lora", dict(PROMPTS="captions.pkl", MASTER_ADDR="10.0.0.1"),
     dict(generator_lr=5e-5, generator_lora=True, backward_simulation=True)),
    ("dmd2-sdxl-1step", dict(PROMPTS="captions.pkl", MASTER_ADDR="10.0.0.1", GENERATOR_CKPT="ode.bin"),
     dict(conditioning_timestep=399, generator_ckpt_path="ode.bin", denoising=False, generator_lr=5e-7)),
])
def test_train_sh_dmd2_recipes_parse_with_the_papers_values(recipe, env, expected, tmp_path):
    args = train_dmd2.parse_args(run_recipe("train.sh", tmp_path, RECIPE=recipe, DATA_DIR="data", **env))
    for key, value in expected.items():
        assert getattr(args, key) == value, key


def test_train_sh_ode_pretraining_recipe_is_dmd2s_script(tmp_path):
    """RECIPE=dmd2-sdxl-ode: DMD2's ODE-pair pretraining script's flags, 4 pairs a process on 64 processes."""
    import train_sd_ode

    args = train_sd_ode.parse_args(run_recipe("train.sh", tmp_path, RECIPE="dmd2-sdxl-ode", DATA_DIR="pairs_lmdb",
                                              MASTER_ADDR="10.0.0.1"))
    expected = dict(model_id="stabilityai/stable-diffusion-xl-base-1.0", sdxl=True, tiny_vae=True,
                    ode_pair_path="pairs_lmdb", num_ode_pairs=10000, ode_batch_size=4, conditioning_timestep=399,
                    generator_lr=1e-5, resolution=1024, seed=10, max_grad_norm=10.0, use_fp16=True, grid_size=1,
                    checkpoint_layout="dmd2")
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


def test_eval_sh_watches_a_dmd2_run_folder(tmp_path):
    """RECIPE=dmd2-imagenet WATCH=RUN: DMD2's continuous evaluation (test_folder_edm.py's ImageNet settings)."""
    from evaluations import watch

    argv = run_recipe("eval.sh", tmp_path, full_argv=True, RECIPE="dmd2-imagenet", WATCH="runs/dmd2",
                      REF_BATCH="imagenet_fid_refs_edm.npz", NUM_GPUS="7")
    assert argv[argv.index("-m", 3) + 1] == "evaluations.watch" and "--nproc_per_node=7" in argv
    args = watch.parse_args(argv[argv.index("evaluations.watch") + 1:])
    assert (args.folder, args.ref_path, args.resolution, args.label_dim, args.seed, args.total_eval_samples,
            args.eval_batch_size) == ("runs/dmd2", "imagenet_fid_refs_edm.npz", 64, 1000, 10, 50_000, 128)


@pytest.mark.parametrize("recipe, expected", [
    ("dmd2-sd15", dict(eval_res=256, total_eval_samples=30000, eval_batch_size=10, clip_score=False, pred_eps=True,
                       model_id="runwayml/stable-diffusion-v1-5")),
    ("dmd2-sdxl", dict(eval_res=512, total_eval_samples=10000, eval_batch_size=4, clip_score=True, num_step=4,
                       conditioning_timestep=999, model_id="stabilityai/stable-diffusion-xl-base-1.0")),
])
def test_eval_sh_watches_a_text_to_image_run_as_dmd2s_test_folder_scripts(recipe, expected, tmp_path):
    from evaluations import watch_text

    argv = run_recipe("eval.sh", tmp_path, full_argv=True, RECIPE=recipe, WATCH="runs/sd", ANNO="captions.pkl",
                      REF_DIR="val2014")
    assert argv[:2] == ["-m", "evaluations.watch_text"]
    args = watch_text.parse_args(argv[2:])
    assert (args.folder, args.anno_path, args.ref_dir, args.seed) == ("runs/sd", "captions.pkl", "val2014", 10)
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
    for recipe, variable in (("dmd2-sd15-gan", "CKPT_ONLY"), ("dmd2-sdxl-1step", "GENERATOR_CKPT")):
        proc = subprocess.run(["bash", str(ROOT / "train.sh")], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHON": "false", "RECIPE": recipe, "DATA_DIR": "data",
                                   "PROMPTS": "p.pkl", "NNODES": "1"})
        assert proc.returncode != 0 and f"set {variable}" in proc.stderr, recipe


@pytest.mark.parametrize("recipe, env, processes, per_process", [
    ("dmd2-imagenet", {}, 7, 40), ("dmd2-imagenet", {"NUM_GPUS": "8"}, 8, 35),
    ("dmd2-sd15", {"TEACHER": "sd15", "PROMPTS": "p.pkl", "MASTER_ADDR": "10.0.0.1", "NODE_RANK": "3"}, 64, 32),
    ("dmd2-sd15", {"TEACHER": "sd15", "PROMPTS": "p.pkl", "NNODES": "1"}, 8, 256),
    ("reg", {"NUM_GPUS": "4"}, 4, 64), ("dit", {}, 8, 32)])
def test_train_sh_recipes_keep_the_papers_global_batch(recipe, env, processes, per_process, tmp_path):
    """DMD2's ImageNet recipe is 7 GPUs x 40 = 280 (8 x 40 would be 320): any process count splits the paper's
    global batch, and the launch says how."""
    printed = []
    argv = run_recipe("train.sh", tmp_path, full_argv=True, stderr=printed, RECIPE=recipe, DATA_DIR="data", **env)
    total = {"dmd2-imagenet": 280, "dmd2-sd15": 2048}.get(recipe, 256)
    assert f"global batch {total} = {processes} process(es) x {per_process}" in printed[0]
    batch = argv[argv.index("--batch_size") + 1] if recipe.startswith("dmd2") else \
        argv[argv.index("--batch-size" if recipe != "dit" else "--global-batch-size") + 1]
    assert int(batch) == (per_process if recipe.startswith("dmd2") else total)
    if "--num_processes" in argv:
        assert int(argv[argv.index("--num_processes") + 1]) == processes
    if recipe == "dmd2-sd15" and processes == 64:
        assert argv[argv.index("--machine_rank") + 1] == "3" and argv[argv.index("--num_machines") + 1] == "8"


@pytest.mark.parametrize("recipe, env, message", [
    ("dmd2-imagenet", {"NUM_GPUS": "3"}, "global batch 280, which 3 processes"),
    ("reg", {"NUM_GPUS": "3"}, "global batch 256, which 3 processes"),
    ("dmd2-sd15", {"TEACHER": "sd15", "PROMPTS": "p.pkl"}, "set MASTER_ADDR"),
    ("dmd2-sdxl", {"PROMPTS": "p.pkl", "NNODES": "1", "NUM_GPUS": "3"}, "global batch 128, which 3 processes"),
    ("dit", {"NNODES": "x"}, "NNODES must be a positive integer")])
def test_train_sh_refuses_a_process_count_that_cannot_give_the_global_batch(recipe, env, message):
    proc = subprocess.run(["bash", str(ROOT / "train.sh")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHON": "false", "RECIPE": recipe, "DATA_DIR": "data", **env})
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, expected", [
    ([], dict(enc_type=None, proj_coeff=0.0, cls=0.0, max_grad_norm=None, mixed_precision="no", tf32=True)),
    (["--enc-type", "dinov2-vit-b"], dict(enc_type="dinov2-vit-b", proj_coeff=0.5, cls=0.0, max_grad_norm=1.0,
                                          tf32=False)),
    (["--proj-coeff", "0.5", "--cls", "0.03"], dict(enc_type="dinov2-vit-b", cls=0.03, max_grad_norm=1.0, tf32=False)),
    (["--proj-coeff", "0", "--cls", "0"], dict(proj_coeff=0.0, cls=0.0, max_grad_norm=1.0, tf32=True)),
    (["--enc-type", "dinov2-vit-b", "--allow-tf32", "--max-grad-norm", "2"], dict(max_grad_norm=2.0, tf32=True)),
])
def test_sit_models_take_sits_defaults_unless_an_alignment_flag_asks_for_repas(flags, expected):
    """SiT's own command trains plain SiT (no encoder, no clipping, TF32 on); REPA's and REG's flags give their
    methods with REPA's defaults for the rest (DINOv2-B, weight 0.5, clipping at 1, TF32 only when asked)."""
    from methods.denoising_cli import use_tf32, validate

    args = train.parse_args(["--model", "SiT-XL/2", "--data-path", "data", *flags])
    validate(args)
    tf32 = expected.pop("tf32")
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert use_tf32(args) == tf32
