"""The originals' documented commands (tests/originals.py) run here: every row parses with this repository's
script of that name (or the equivalent the README's card shows, where the layout has no room for the original's
path), and REG's evaluation chain runs end to end as its eval.sh wrote it, with only the model size, steps, sample
count, data and unavailable weights substituted."""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_stand_in import StandInInception, random_images
from originals import PLACEHOLDERS, ROWS, Row

LAUNCHERS = ("torchrun", "accelerate")


def split(command: str, cwd: str = "") -> tuple[str, list[str]]:
    """``(module, argv)`` of a command: environment assignments and the launcher (``torchrun``, ``accelerate
    launch``, ``python [-m torch.distributed.launch]``) with its options dropped; the script read from ``cwd``."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    tokens = shlex.split(command)
    while "=" in tokens[0] and not tokens[0].startswith("-"):
        tokens.pop(0)
    if tokens[0] == "python" and tokens[1] == "-m" and tokens[2] != "torch.distributed.launch":
        return tokens[2], tokens[3:]
    start = next(i for i, token in enumerate(tokens) if token.endswith(".py"))
    script = os.path.normpath(os.path.join(cwd, tokens[start]))
    return script[:-3].replace(os.sep, "."), tokens[start + 1:]


def ours(row: Row) -> str:
    return row.ours if row.ours else row.command


def params():
    for row in ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=row.pending)] if row.pending else []
        yield pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", params())
def test_every_documented_command_parses(row):
    module, argv = split(ours(row), row.cwd)
    parsed = importlib.import_module(module).parse_args(argv)
    assert parsed is not None


def test_the_table_names_every_original_and_its_commit():
    from originals import COMMITS

    assert {row.repo for row in ROWS} == set(COMMITS) and len(ROWS) == 48
    assert all(row.ours or split(row.command, row.cwd)[0] for row in ROWS)


def substitute(command: str, pairs: dict[str, str]) -> str:
    for old, new in pairs.items():
        assert old in command, old
        command = command.replace(old, new)
    return command


def test_regs_eval_sh_runs_end_to_end(tmp_path, monkeypatch):
    """REG's eval.sh, both commands: generate.py writes the .npz under the name the evaluator call gives, and
    the evaluator writes REG's results file. Substituted: model size (SiT-Ti/2 with an 8-d class token, an 8 px
    image in pixel space: the SD-VAE is not downloadable here), steps, sample count, batch, the reference."""
    import evaluations.evaluator as evaluator
    from models import create_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluator, "load_inception", lambda *args, **kwargs: StandInInception())
    generate_row, evaluate_row = [row for row in ROWS if row.repo == "Martinser/REG" and row.file == "eval.sh"]
    run = tmp_path / "your_path/reg_xlarge_dinov2_base_align_8_cls/linear-dinov2-b-enc8/checkpoints"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    reg = create_model("SiT-Ti/2", input_size=8, in_channels=3, num_classes=10, z_dims=[8], cls_token_dim=8)
    torch.save({"ema": reg.state_dict(), "args": {"model": "SiT-Ti/2", "image_size": 8, "num_classes": 10,
                                                  "vae": "none", "encoder_depth": 1}}, run / "4000000.pt")
    sizes = {"--model SiT-XL/2": "--model SiT-Ti/2 --vae none", "--num-fid-samples 50000": "--num-fid-samples 4",
             "--encoder-depth=8": "--encoder-depth=1", "--projector-embed-dims=768": "--projector-embed-dims=8",
             "--per-proc-batch-size=64": "--per-proc-batch-size=2", "--num-steps=250": "--num-steps=3",
             "--cls=768": "--cls=8"}
    module, argv = split(substitute(generate_row.command, sizes))
    importlib.import_module(module).main(importlib.import_module(module).parse_args(argv))
    npz = run / "SiT-Ti-2-4000000-size-8-vae-none-cfg-2.3-seed-0-sde-0.85-2.3.npz"
    assert np.load(npz)["arr_0"].shape == (4, 8, 8, 3)
    np.savez(tmp_path / "your_path/VIRTUAL_imagenet256_labeled.npz", random_images(6, size=8, seed=1))
    names = {"SiT-XL-2-4000000-size-256-vae-ema": "SiT-Ti-2-4000000-size-8-vae-none"}
    module, argv = split(substitute(evaluate_row.command, names))
    evaluator.main(evaluator.parse_args(argv))
    results = run.parent / "checkpoints25040000002.30.852.3cfg_cond_true.txt"
    assert [line.split(":")[0] for line in results.read_text().splitlines()] == \
        ["Inception Score", "FID", "sFID", "Precision", "Recall"]


def row_of(repo: str, start: str) -> Row:
    """The table's row of ``repo`` whose command starts (after the launcher) with ``start``."""
    (row,) = [r for r in ROWS if r.repo == repo and start in r.command]
    return row


def run_row(row: Row, pairs: dict[str, str]):
    module, argv = split(substitute(row.command, pairs), row.cwd)
    script = importlib.import_module(module)
    return script.main(script.parse_args(argv))


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """An ImageNet-style folder of the built-in images: ten classes, four 16 px images each."""
    from PIL import Image

    from imagedata.procedural import render

    root = tmp_path_factory.mktemp("imagenet") / "train"
    for i in range(40):
        (root / f"n{i % 10:02d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(i, resolution=16, num_classes=10)).save(root / f"n{i % 10:02d}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_dit_and_sits_readme_commands_run_end_to_end(imagenet, tmp_path, monkeypatch):
    """DiT's and SiT's README commands, run in order as their READMEs chain them: train (DiT; SiT with its noise
    target), fine-tune from a checkpoint (SiT's --ckpt), sample a grid, sample for FID (SiT's with its
    likelihood). Substituted: the data path, model size (Ti, 16 px, pixel space: the SD-VAE is not
    downloadable here), steps, batch and sample counts, and the checkpoint paths the commands point at."""
    monkeypatch.chdir(tmp_path)
    train_size = {"/path/to/imagenet/train": f"{imagenet} --image-size 16 --num-classes 10 --vae none --max-steps 2 "
                  "--ckpt-every 2 --global-batch-size 8 --num-workers 0"}
    run_row(row_of("facebookresearch/DiT", "train.py"), {"DiT-XL/2": "DiT-Ti/4", **train_size})
    dit = tmp_path / "results/000-DiT-Ti-4/checkpoints/0000002.pt"
    assert dit.is_file()
    run_row(row_of("facebookresearch/DiT", "--model DiT-L/4"), {"DiT-L/4": "DiT-Ti/4", "--image-size 256":
                                                                "--image-size 16 --num-sampling-steps 3",
                                                                "/path/to/model.pt": str(dit)})
    assert (tmp_path / "sample.png").is_file()
    npz = run_row(row_of("facebookresearch/DiT", "sample_ddp.py"), {
        "DiT-XL/2": f"DiT-Ti/4 --ckpt {dit} --num-sampling-steps 3 --per-proc-batch-size 2",
        "--num-fid-samples 50000": "--num-fid-samples 2"})
    assert (tmp_path / "samples/DiT-Ti-4-0000002-size-16-vae-none-cfg-1.5-seed-0.npz").is_file() and npz.is_file()

    run_row(row_of("willisma/SiT", "--path-type Linear --prediction noise"), {"SiT-XL/2": "SiT-Ti/4", **train_size})
    sit = tmp_path / "results/001-SiT-Ti-4/checkpoints/0000002.pt"
    run_row(row_of("willisma/SiT", "train.py --model SiT-L/2"), {"SiT-L/2": "SiT-Ti/4", **train_size,
            "--ckpt /path/to/model.pt": f"--ckpt {sit} --path-type Linear --prediction noise"})
    assert (tmp_path / "results/002-SiT-Ti-4/checkpoints/0000002.pt").is_file()
    sit_flags = "--image-size 16 --num-classes 10 --vae none --num-sampling-steps 3 --sampling-method euler"
    run_row(row_of("willisma/SiT", "sample.py ODE --model SiT-L/4"), {
        "SiT-L/4": "SiT-Ti/4 --path-type Linear --prediction noise", "--image-size 256": sit_flags,
        "/path/to/model.pt": str(sit)})
    run_row(row_of("willisma/SiT", "--likelihood"), {
        "SiT-XL/2": f"SiT-Ti/4 --ckpt {sit} --path-type Linear --prediction noise {sit_flags} "
                    "--per-proc-batch-size 2 --num-fid-samples 2"})
    assert (tmp_path / "samples/SiT-Ti-4-0000002-cfg-1.0-2-ODE-3-euler.npz").is_file()
    assert list((tmp_path / "samples").glob("*-likelihood.npz"))


@pytest.mark.slow
def test_repae_readme_chain_runs_end_to_end(imagenet, tmp_path, monkeypatch):
    """REPA-E's README from its data to its samples, each command as written, run from a copy of the repository's
    configs/: the data (preprocessing.py's equivalent), end-to-end training, the tuned VAE saved, its latents cached,
    a SiT trained on them, samples under REPA-E's name. Substituted: model and VAE sizes (SiT-Ti/1, the tiny VAE in
    the files the commands name, 32 px), the encoder (a random tiny ViT for DINOv2), LPIPS (a random VGG), steps,
    batches, sample counts, fp32 and no tracker (a CPU without an account), and the released VAE path."""
    import shutil

    from models.discriminator import NLayerDiscriminator
    from models.vae import VAE_models, to_ldm_state_dict

    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(__file__).resolve().parents[1] / "configs", tmp_path / "configs")
    (tmp_path / "pretrained/sdvae").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(to_ldm_state_dict(VAE_models["tiny-f4d4"]().state_dict()), "pretrained/sdvae/sdvae-f8d4.pt")
    torch.save({"latents_scale": torch.full((1, 4, 1, 1), 2.0), "latents_bias": torch.zeros(1, 4, 1, 1)},
               "pretrained/sdvae/sdvae-f8d4-latents-stats.pt")
    torch.save(NLayerDiscriminator().state_dict(), "pretrained/sdvae/sdvae-f8d4-discriminator-ckpt.pt")
    rows = [row for row in ROWS if row.repo == "End2End-Diffusion/REPA-E"]
    small = {'--batch-size=256': '--batch-size=4 --resolution 32 --no-compile --num-workers 0 --log-every 1',
             '--report-to="wandb"': '--report-to="none"', '--mixed-precision="fp16"': '--mixed-precision="no"',
             '--enc-type="dinov2-vit-b"': '--enc-type="tiny-vit"', '--encoder-depth=8': '--encoder-depth=1',
             '--checkpointing-steps=50000': '--checkpointing-steps=2'}
    module, argv = split(substitute(rows[0].ours, {"/PATH/TO/IMAGENET_TRAIN": str(imagenet), "256x256": "32x32"}))
    importlib.import_module(module).main(importlib.import_module(module).parse_args(argv))
    run_row(rows[1], {**small, "--max-train-steps=400000": "--max-train-steps=2", '--model="SiT-XL/2"':
                      '--model="SiT-Ti/1" --lpips-random', '--vae="f8d4"': '--vae="tiny-f4d4"'})
    exp = "exps/sit-xl-dinov2-b-enc8-repae-sdvae-0.5-1.5-400k"
    run_row(rows[2], {"pretrained/sit-repae-vavae/checkpoints/0400000.pt": f"{exp}/checkpoints/0000002.pt"})
    released = {"pretrained/e2e-vavae/e2e-vavae-400k.pt": "exps/e2e-vavae/e2e-vavae.pt", "f16d32": "tiny-f4d4"}
    run_row(rows[3], {**released, "--pproc-batch-size=128": "--pproc-batch-size=4"})
    run_row(rows[4], {**small, **released, "--max-train-steps=4000000": "--max-train-steps=2",
                      '--model="SiT-XL/1"': '--model="SiT-Ti/1"'})
    run_row(rows[5], {"pretrained/sit-ldm-e2e-vavae": "exps/sit-xl-1-dinov2-b-enc8-ldm-only-e2e-vavae-0.5-4m",
                      "--train-steps 4000000": "--train-steps 2 --pproc-batch-size 2", "--num-steps 250":
                      "--num-steps 3", "--num-fid-samples 50000": "--num-fid-samples 2"})
    npz = tmp_path / "samples/sit-xl-1-dinov2-b-enc8-ldm-only-e2e-vavae-0.5-4m_0000002_cfg1.0-0.0-1.0.npz"
    assert np.load(npz)["arr_0"].shape == (2, 32, 32, 3)


@pytest.mark.slow
def test_dmd2s_imagenet_scripts_run_end_to_end(tmp_path, monkeypatch):
    """DMD2's experiments/imagenet: the GAN recipe trained as its script writes it (train_dmd2.py in place of its
    main/edm/train_edm.py), then its continuous evaluation of that run folder (evaluations.watch in place of
    main/edm/test_folder_edm.py). Substituted: a tiny EDM teacher for EDM's ImageNet pickle, an LMDB of the built-in
    images at its resolution, steps, batches and sample counts, fp32 and no tracker (a CPU without an account), a
    stand-in Inception with its reference statistics."""
    import evaluations.inception
    from evaluations import watch
    from models.pretrained import Query, sampling_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluations.inception, "load_inception", lambda *a, **k: StandInInception())
    pkl = Path(__file__).parent / "fixtures" / "edm_tiny_snapshot.pkl"
    _, cfg = sampling_config(Query(ckpt=str(pkl)))
    res, classes = str(cfg["image_size"]), str(cfg["num_classes"])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "edm-imagenet-64x64-cond-adm.pkl").write_bytes(pkl.read_bytes())  # EDM's, in miniature
    module, argv = split(f"python preprocessing/make_lmdb.py --source builtin --dest checkpoints/imagenet-64x64_lmdb "
                         f"--image-size {res} --num-classes {classes} --num-images 16")
    importlib.import_module(module).main(importlib.import_module(module).parse_args(argv))
    np.savez("checkpoints/imagenet_fid_refs_edm.npz", mu=np.zeros(16), sigma=np.eye(16))
    train, evaluate = (row_of("tianweiy/DMD2", "diffusion1000_lr2e-6_scratch --batch_size 40"),
                       row_of("tianweiy/DMD2", "test_folder_edm.py"))
    name = "imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch"
    sizes = {"--resolution 64 --label_dim 1000": f"--resolution {res} --label_dim {classes}"}
    no_tracker = {"--wandb_entity $WANDB_ENTITY --wandb_project $WANDB_PROJECT ": "", f'--wandb_name "{name}" ': "",
                  "--use_fp16 ": ""}
    short = {"--train_iters 10000000": "--train_iters 2", "--batch_size 40": "--batch_size 2 --num_workers 0",
             "--log_iters 500": "--log_iters 2 --wandb_iters 2"}
    # DMD2's released folder for the resume script is written by this run, in DMD2's layout
    module, argv = split(substitute(ours(train), {**sizes, **no_tracker, **short,
                                                  "--max_checkpoint 500": "--max_checkpoint 500 --checkpoint_layout dmd2"}))
    importlib.import_module(module).main(importlib.import_module(module).parse_args(argv))
    (run,) = (tmp_path / "checkpoints" / name).iterdir()
    assert (run / "checkpoints" / "0000002.pt").is_file() and (run / "checkpoint_model_000002").is_dir()
    stats = watch.main(watch.parse_args(split(substitute(ours(evaluate), {
        **sizes, f"{name}/TIMESTAMP_TBD": f"{name}/{run.name} --once --total_eval_samples 4 --eval_batch_size 2",
        f"--wandb_name test_{name} --wandb_entity $WANDB_ENTITY --wandb_project $WANDB_PROJECT ": ""}))[1]))
    assert list(stats) == [str(Path("checkpoints") / name / run.name / "checkpoint_model_000002")]  # scored once
    # the two other scripts: the resume from a released checkpoint folder at lr 5e-7, and the recipe without a GAN
    for script, pairs in (("diffusion1000_lr5e-7_resume", {
            "imagenet_lr2e-6_scratch_fid2.61_checkpoint_model_405500/": f"{name}/{run.name}/checkpoint_model_000002/",
            "--train_iters 10000000": "--train_iters 4"}), ("imagenet_lr2e-6_scratch --batch", {})):
        row = row_of("tianweiy/DMD2", script)
        resumed = row.command.split('--wandb_name "')[1].split('"')[0]
        module, argv = split(substitute(ours(row), {**sizes, **short, **pairs, "--use_fp16 ": "",
                                                    f'--wandb_name "{resumed}" ': "", "--wandb_entity $WANDB_ENTITY "
                                                    "--wandb_project $WANDB_PROJECT ": ""}))
        importlib.import_module(module).main(importlib.import_module(module).parse_args(argv))
        (out,) = (tmp_path / "checkpoints" / resumed).iterdir()
        assert sorted(p.name for p in (out / "checkpoints").glob("*.pt"))[-1] == f"000000{4 if pairs else 2}.pt"


def quarter_vae(path: Path) -> None:
    """A random 4-channel, /4 diffusers VAE folder: its latents meet the tiny ViT's 4 px patches one to one."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 32), latent_channels=4,
                  layers_per_block=1, norm_num_groups=8, sample_size=32).save_pretrained(path)


ALIGNED = {'--report-to="wandb"': '--report-to="none"', '--mixed-precision="fp16"': '--mixed-precision="no"',
           '--enc-type="dinov2-vit-b"': '--enc-type="tiny-vit"', '--encoder-depth=8': '--encoder-depth=1'}


@pytest.mark.slow
def test_repas_readme_runs_end_to_end(imagenet, tmp_path, monkeypatch):
    """REPA's README in order: its data preparation (run from preprocessing/), training, generate.py. Substituted
    as for REG (below); REPA's data folder is images/ + vae-sd/."""
    monkeypatch.chdir(tmp_path)
    quarter_vae(tmp_path / "vae")
    convert, encode = [row for row in ROWS if row.repo == "sihyun-yu/REPA" and row.cwd == "preprocessing"]
    run_row(convert, {"[YOUR_DOWNLOAD_PATH]/ILSVRC/Data/CLS-LOC/train": str(imagenet), "[TARGET_PATH]": "data",
                      "256x256": "32x32"})
    run_row(encode, {"[TARGET_PATH]": "data", "vae-sd": f"vae-sd --vae {tmp_path / 'vae'}"})
    run_row(row_of("sihyun-yu/REPA", 'exp-name="linear-dinov2-b-enc8" '), {
        **ALIGNED, "[YOUR_DATA_PATH]": f"data --model SiT-Ti/1 --resolution 32 --num-classes 10 --vae {tmp_path / 'vae'} "
        "--batch-size 4 --max-train-steps 2 --checkpointing-steps 2 --num-workers 0"})
    ckpt = tmp_path / "exps/linear-dinov2-b-enc8/checkpoints/0000002.pt"
    assert ckpt.is_file()
    run_row(row_of("sihyun-yu/REPA", "generate.py"), {
        "--model SiT-XL/2": f"--model SiT-Ti/1 --vae {tmp_path / 'vae'}", "--num-fid-samples 50000":
        "--num-fid-samples 2", "YOUR_CHECKPOINT_PATH": str(ckpt), "--encoder-depth=8": "--encoder-depth=1",
        "--projector-embed-dims=768": "--projector-embed-dims=32", "--per-proc-batch-size=64": "--per-proc-batch-size=2",
        "--num-steps=250": "--num-steps=3"})
    (repas,) = (tmp_path / "samples").glob("SiT-Ti-1-0000002-size-32-vae-*-cfg-1.8-seed-0-sde.npz")  # REPA's name
    assert np.load(repas)["arr_0"].shape == (2, 32, 32, 3)


def train_args(row: Row):
    module, argv = split(row.command, row.cwd)
    return importlib.import_module(module).parse_args(argv)


@pytest.mark.slow
def test_regs_scripts_run_end_to_end(imagenet, tmp_path, monkeypatch):
    """REG's shell scripts in order: its data preparation (convert, encode), train.sh (the README's copy of it, with
    SiT-B/2, differs in nothing else), and eval.sh's sampling.
    Substituted: the data paths, model and encoder sizes (SiT-Ti/1; a random tiny ViT for DINOv2, whose 4 px
    patches meet a /4 VAE's latents), a tiny /4 VAE for the SD-VAE, 32 px, steps, batches and sample counts, fp32
    and no tracker; REG's encode script writes vae-sd-256, which REG's own dataset does not read: vae-sd here."""
    monkeypatch.chdir(tmp_path)
    quarter_vae(tmp_path / "vae")
    convert, encode = (row_of("Martinser/REG", "convert"), row_of("Martinser/REG", " encode"))
    data = "data_path/imagenet_vae"
    run_row(convert, {"/home/share/imagenet/train": str(imagenet), "256x256": "32x32",
                      "/home/share/imagenet_vae": data})
    run_row(encode, {"/home/share/imagenet_vae": data, "vae-sd-256": f"vae-sd --vae {tmp_path / 'vae'}"})
    small = {**ALIGNED, '--batch-size=256': f'--batch-size=4 --resolution 32 --num-classes 10 --vae {tmp_path / "vae"} '
                                 '--max-train-steps 2 --checkpointing-steps 2 --num-workers 0',
             '--model="SiT-XL/2"': '--model="SiT-Ti/1"'}
    run_row(row_of("Martinser/REG", "reg_xlarge_dinov2_base_align_8_cls\" --exp-name"), small)
    run = tmp_path / "your_path/reg_xlarge_dinov2_base_align_8_cls/linear-dinov2-b-enc8/checkpoints"
    assert (run / "0000002.pt").is_file()
    # the README's copy of train.sh is the same command at another size: parsed, it differs in nothing else
    script_sh, readme = row_of("Martinser/REG", 'model="SiT-XL/2"'), row_of("Martinser/REG", 'model="SiT-B/2"')
    differ = {k for k, v in vars(train_args(readme)).items() if vars(train_args(script_sh))[k] != v}
    assert differ == {"model", "encoder_depth", "results_dir", "exp_name"}, differ  # results_dir: --output-dir
    generate_row = [row for row in ROWS if row.repo == "Martinser/REG" and row.file == "eval.sh"][0]
    run_row(generate_row, {"4000000.pt": "0000002.pt", "--model SiT-XL/2": f"--model SiT-Ti/1 --vae {tmp_path / 'vae'}",
                           "--num-fid-samples 50000": "--num-fid-samples 2", "--encoder-depth=8": "--encoder-depth=1",
                           "--projector-embed-dims=768": "--projector-embed-dims=32", "--cls=768": "--cls=32",
                           "--per-proc-batch-size=64": "--per-proc-batch-size=2", "--num-steps=250": "--num-steps=3"})
    (regs,) = run.glob("SiT-Ti-1-0000002-size-32-vae-*-cfg-2.3-seed-0-sde-0.85-2.3.npz")  # REG's name
    assert np.load(regs)["arr_0"].shape == (2, 32, 32, 3)
