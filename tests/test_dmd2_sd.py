"""DMD2's Stable Diffusion conventions: the teacher by hub id through the Hugging Face cache (--revision too) or as a
folder, one line when it is missing; unit noise at the generator's top level; the real data's prompts for the
few-step generator's inputs; --gen_cls_loss as the gate of the generator's GAN loss; training prompts encoded a
batch at a time. On the tiny random SD folder of the run fixtures, offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import train_dmd2
from methods import dmd2_text
from models import stable_diffusion

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from fixtures.record_run_fixtures import sd_folder

    return sd_folder(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def hub_id(sd_folder):
    """The tiny SD folder as the Hugging Face cache holds a downloaded model (snapshots/<commit>/, refs/main)."""
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--diffusion-lab-tests--tiny-sd"
    for part in ("unet", "scheduler", "text_encoder", "tokenizer", "vae"):
        shutil.copytree(sd_folder / part, repo / "snapshots" / SNAPSHOT / part, dirs_exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return "diffusion-lab-tests/tiny-sd"


def load(argv):
    from methods.dmd2_cli import load_teacher, parse_args, validate

    args = parse_args(argv)
    validate(args)
    return load_teacher(args, torch.device("cpu"))


def test_a_hub_id_teacher_loads_from_the_cache_as_the_folder_does(sd_folder, hub_id):
    from models.vae import load_vae

    prompts = ["--train_prompt_path", str(sd_folder / "prompts.txt")]
    folder, folder_cfg, _ = load(["--teacher", str(sd_folder), *prompts])
    for revision in ([], ["--revision", SNAPSHOT]):
        teacher, cfg, codec = load(["--model_id", hub_id, *prompts, *revision])
        mine, theirs = teacher.model.state_dict(), folder.model.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
        assert cfg["vae"] == f"{hub_id}/vae" + (f"@{SNAPSHOT}" if revision else "")  # what the generator records
        vae = load_vae(cfg["vae"])  # and what sample.py reads back, offline
        assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), codec.state_dict().values()))


def test_a_missing_hub_teacher_is_one_line_naming_the_download(sd_folder):
    args = train_dmd2.parse_args(["--model_id", "nobody-here/no-such-sd", "--revision", "v2",
                                  "--train_prompt_path", str(sd_folder / "prompts.txt"), "--output_path", "unused"])
    with pytest.raises(ValueError) as info:
        train_dmd2.main(args)
    message = str(info.value)
    assert "\n" not in message and "nobody-here/no-such-sd at revision v2" in message
    assert "hf download nobody-here/no-such-sd --revision v2" in message and "--model_id" in message
    assert not Path("unused").exists()
    with pytest.raises(ValueError, match="drop --revision"):
        load(["--model_id", str(sd_folder), "--revision", "v2"])


@pytest.fixture()
def counted(monkeypatch):
    """Every batch of prompts the text encoder embeds, and the training prompts drawn for the generator."""
    seen = {"encoded": [], "drawn": 0}
    call, draw = stable_diffusion.TextEncoder.__call__, dmd2_text.Prompts.draw

    def encode(self, prompts):
        seen["encoded"].append(list(prompts))
        return call(self, prompts)

    def drawn(self, n, device):
        seen["drawn"] += n
        return draw(self, n, device)

    monkeypatch.setattr(stable_diffusion.TextEncoder, "__call__", encode)
    monkeypatch.setattr(dmd2_text.Prompts, "draw", drawn)
    return seen


def train(sd_folder, tmp_path, *flags, prompts=None, save=False):
    file = sd_folder / "prompts.txt"
    if prompts:
        file = tmp_path / "prompts.txt"
        file.write_text("\n".join(prompts) + "\n")
    train_dmd2.main(train_dmd2.parse_args([
        "--teacher", str(sd_folder), "--train_prompt_path", str(file), "--real_image_path", str(sd_folder / "laion_lmdb"),
        "--output_path", str(tmp_path / "out"), "--batch_size", "2", "--num_workers", "0", "--train_iters", "2",
        "--log_iters", "2", "--wandb_iters", "2", "--grid_size", "1", *([] if save else ["--no_save"]),
        "--warmup_step", "0", *flags]))
    (run,) = (tmp_path / "out").iterdir()
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_prompts_are_encoded_a_batch_at_a_time(sd_folder, tmp_path, counted):
    """A prompt file of 500 prompts: no call embeds more than one batch (2) or the grid (1), and the generator's
    prompts are drawn from it; the GAN head without --gen_cls_loss leaves the generator's GAN loss off."""
    many = [f"prompt {chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(500)]
    records = train(sd_folder, tmp_path, "--cls_on_clean_image", "--gen_cls_loss_weight", "5e-3",
                    "--guidance_cls_loss_weight", "1e-2", prompts=many)
    assert counted["drawn"] > 0 and max(len(batch) for batch in counted["encoded"]) <= 2
    assert "gen_cls_loss" not in records[-1] and "guidance_cls_loss" in records[-1]


def test_few_step_inputs_take_the_real_datas_prompts(sd_folder, tmp_path, counted):
    """--denoising --backward_simulation: the generator is conditioned on the prompts of DMD2's LMDB, never on
    training prompts drawn from --train_prompt_path (DMD2's denoising loader); --gen_cls_loss turns the generator's
    GAN loss on."""
    records = train(sd_folder, tmp_path, "--denoising", "--num_denoising_step", "2", "--backward_simulation",
                    "--cls_on_clean_image", "--gen_cls_loss", "--gen_cls_loss_weight", "5e-3",
                    "--guidance_cls_loss_weight", "1e-2")
    assert counted["drawn"] == 0 and "gen_cls_loss" in records[0]
    with pytest.raises(ValueError, match="real data's prompts"):
        train_dmd2.main(train_dmd2.parse_args(["--teacher", str(sd_folder), "--train_prompt_path",
                                               str(sd_folder / "prompts.txt"), "--denoising", "--backward_simulation",
                                               "--output_path", str(tmp_path / "refused")]))
    assert not (tmp_path / "refused").exists()


def test_an_sd_generator_starts_from_unit_noise(sd_folder):
    """DMD2's SD generator maps unit noise at its conditioning step (and diffusers' LCMScheduler starts there),
    not the pure noise of that step's variance (sqrt(1 - abar_999) = 0.99767 for SD1.5)."""
    from diffusion.denoiser import noised
    from diffusion.network import contract
    from diffusion.pipeline import few_step_sample
    from methods.dmd2_cli import build_method

    teacher, cfg, codec = load(["--teacher", str(sd_folder), "--train_prompt_path", str(sd_folder / "prompts.txt")])
    cfg.update(latent_channels=codec.latent_channels, latent_size=cfg["image_size"] // codec.downsample)
    from methods.dmd2_cli import parse_args

    method = build_method(parse_args(["--teacher", str(sd_folder)]), teacher, cfg, codec, lambda b: (None, None),
                          teacher.prompts.draw, torch.device("cpu"), 2)
    assert contract(method.modules["model"]).unit_noise and teacher.unit_noise
    torch.manual_seed(0)
    eps = torch.randn(2, 4, 8, 8)
    torch.manual_seed(0)
    x, sigma = method.generator_input(method.modules["model"], 2, None, None, torch.device("cpu"))
    assert torch.equal(x, eps)

    seen = []

    def den(x, sigma, y):
        seen.append(x)
        return type("Out", (), {"x0": torch.zeros_like(x)})

    few_step_sample(den, eps, None, [14.6, 1.0], unit_noise=True)
    few_step_sample(den, eps, None, [14.6, 1.0])
    assert torch.equal(seen[0], eps) and not torch.equal(seen[2], eps)
    level = torch.full((2,), 14.6, dtype=torch.float64)
    torch.testing.assert_close(seen[2], noised(torch.zeros_like(eps), level, eps))


@pytest.fixture(scope="module")
def sd_generator(sd_folder, tmp_path_factory):
    """A four-step LoRA generator distilled for 2 steps from the tiny SD folder (DMD2's default steps)."""
    out = tmp_path_factory.mktemp("sd_generator")
    train_dmd2.main(train_dmd2.parse_args([
        "--teacher", str(sd_folder), "--train_prompt_path", str(sd_folder / "prompts.txt"), "--real_image_path",
        str(sd_folder / "laion_lmdb"), "--output_path", str(out), "--batch_size", "2", "--num_workers", "0",
        "--train_iters", "2", "--log_iters", "2", "--wandb_iters", "2", "--grid_size", "1", "--warmup_step", "0",
        "--generator_lr", "1e-3", "--guidance_lr", "1e-3", "--denoising", "--num_denoising_step", "4",
        "--backward_simulation", "--generator_lora", "--lora_rank", "4"]))
    (run,) = out.iterdir()
    return run / "checkpoints" / "0000002.pt"


def dmd2_demo_loop(unet, scheduler, embeddings, seed: int, steps: list[int], added=None) -> torch.Tensor:
    """DMD2's demo (demo/text_to_image_sdxl.py ``sample``), written out with diffusers' scheduler: unit noise; per
    step the UNet's eps at that timestep, x0 = (x - sqrt(1 - abar) eps) / sqrt(abar), add_noise to the next."""
    abar = scheduler.alphas_cumprod.double()
    torch.manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(len(embeddings), unet.config.in_channels, size, size)
    for i, step in enumerate(steps):
        t = torch.full((len(x),), step, dtype=torch.long)
        eps = unet(x, t, embeddings, added_cond_kwargs=added).sample.double()
        x0 = ((x.double() - (1 - abar[step]).sqrt() * eps) / abar[step].sqrt()).float()
        if i + 1 < len(steps):
            x = scheduler.add_noise(x0, torch.randn_like(x0), torch.full((len(x),), steps[i + 1], dtype=torch.long))
    return x0


def test_sample_py_samples_prompts_as_dmd2s_demo(sd_folder, sd_generator, tmp_path):
    """sample.py --prompt on a train_dmd2.py checkpoint (LoRA merged, its base model and steps as recorded) and on
    DMD2's own form of the same weights (a UNet state dict on --model_id, --num_step 4): the same latents as DMD2's
    demo loop on diffusers' scheduler, and a grid of one image per prompt."""
    from diffusers import DDPMScheduler
    from PIL import Image

    import sample
    from evaluations.prompt_cli import load_text_generator, sample_prompts

    prompts = ["a red disc", "a cat"]
    args = sample.parse_args(["--ckpt", str(sd_generator), *sum((["--prompt", p] for p in prompts), []),
                              "--output", str(tmp_path / "grid.png"), "--seed", "3"])
    sample.main(args)
    assert Image.open(tmp_path / "grid.png").size[0] > 64
    model, encoder, codec, abar = load_text_generator(args, torch.device("cpu"))
    ours = sample_prompts(model, encoder, abar, prompts, seed=3)
    scheduler = DDPMScheduler.from_pretrained(sd_folder / "scheduler")
    expected = dmd2_demo_loop(model.unet, scheduler, encoder(prompts), 3, [999, 749, 499, 249])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)

    torch.save({k.removeprefix("unet."): v for k, v in model.state_dict().items()}, tmp_path / "unet.bin")
    theirs = sample.parse_args(["--ckpt", str(tmp_path / "unet.bin"), "--model_id", str(sd_folder), "--num_step", "4",
                                "--prompt", "unused"])
    released, *_ = load_text_generator(theirs, torch.device("cpu"))
    assert released.generator_sigmas == pytest.approx(model.generator_sigmas, rel=1e-6)
    torch.testing.assert_close(sample_prompts(released, encoder, abar, prompts, seed=3), ours)
    with pytest.raises(ValueError, match="is a text-to-image generator .* --prompt"):  # without a prompt
        sample.main(sample.parse_args(["--ckpt", str(sd_generator)]))
    with pytest.raises(ValueError, match="pass its base model with --model_id"):
        load_text_generator(sample.parse_args(["--ckpt", str(tmp_path / "unet.bin"), "--prompt", "x"]), "cpu")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from fixtures.record_run_fixtures import sdxl_folder

    return sdxl_folder(tmp_path_factory.mktemp("sdxl"))


def test_sdxl_conditions_are_dmd2s(sdxl_folder, sd_folder):
    """--sdxl: the penultimate hidden states of both encoders side by side and the second's pooled projection
    (DMD2's SDXLTextEncoder), zeros as the null condition, time ids (r, r, 0, 0, r, r); the UNet reads them back
    unpacked. --sdxl on an SD1.5 model and --tiny_vae elsewhere are one line."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from models.stable_diffusion import DiffusersEps

    teacher, cfg, codec = load(["--model_id", str(sdxl_folder), "--sdxl", "--train_prompt_path",
                                str(sdxl_folder / "prompts.txt")])
    model = teacher.model
    assert isinstance(model, DiffusersEps) and model.xl and cfg["image_size"] == 64
    assert model.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]
    y = teacher.prompts.encoder(["a cat", "a red disc"])
    hidden, pooled = [], None
    for part in ("", "_2"):
        ids = CLIPTokenizer.from_pretrained(sdxl_folder / f"tokenizer{part}")(
            ["a cat", "a red disc"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        cls = CLIPTextModelWithProjection if part else CLIPTextModel
        out = cls.from_pretrained(sdxl_folder / f"text_encoder{part}")(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    torch.testing.assert_close(y, torch.cat([torch.cat(hidden, -1).flatten(1), pooled], 1))
    assert torch.equal(teacher.null, torch.zeros_like(y[:1]))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 10.0])
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        expected = model.unet(x, t, encoder_hidden_states=torch.cat(hidden, -1), added_cond_kwargs=added).sample
        torch.testing.assert_close(model(x, t, y), expected)
    prompts = ["--train_prompt_path", str(sd_folder / "prompts.txt")]
    with pytest.raises(ValueError, match="not an SDXL model"):
        load(["--model_id", str(sd_folder), "--sdxl", *prompts])
    with pytest.raises(ValueError, match="is not SDXL: drop --tiny_vae"):
        load(["--model_id", str(sd_folder), "--tiny_vae", *prompts])


def test_sdxl_distils_and_samples_as_dmd2s_demo(sdxl_folder, tmp_path):
    """DMD2's SDXL four-step recipe in miniature (--sdxl --denoising --backward_simulation, the GAN head on the
    fake UNet's mid block with --gen_cls_loss), then sample.py --prompt: DMD2's demo loop with the UNet's added
    conditions (pooled text, time ids)."""
    from diffusers import DDPMScheduler

    import sample
    from evaluations.prompt_cli import load_text_generator, sample_prompts

    records = train(sdxl_folder, tmp_path, "--sdxl", "--denoising", "--num_denoising_step", "4",
                    "--backward_simulation", "--cls_on_clean_image", "--gen_cls_loss", "--gen_cls_loss_weight", "5e-3",
                    "--guidance_cls_loss_weight", "1e-2", "--real_guidance_scale", "8", "--generator_lr", "1e-3",
                    save=True)
    assert all(np.isfinite(records[-1][key]) for key in ("loss_dm", "gen_cls_loss", "guidance_cls_loss"))
    (ckpt,) = (tmp_path / "out").glob("*/checkpoints/0000002.pt")
    args = sample.parse_args(["--ckpt", str(ckpt), "--prompt", "a cat", "--prompt", "a red disc",
                              "--output", str(tmp_path / "grid.png")])
    sample.main(args)
    model, encoder, codec, abar = load_text_generator(args, torch.device("cpu"))
    ours = sample_prompts(model, encoder, abar, ["a cat", "a red disc"], seed=0)
    y = encoder(["a cat", "a red disc"])
    hidden = y[:, :-16].reshape(2, 77, 64)
    added = {"text_embeds": y[:, -16:], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    expected = dmd2_demo_loop(model.unet, DDPMScheduler.from_pretrained(sdxl_folder / "scheduler"), hidden, 0,
                              [999, 749, 499, 249], added)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_tiny_vae_decodes_sdxls_grids_with_taesd_from_the_hub_cache(sdxl_folder):
    """--tiny_vae: DMD2's madebyollin/taesdxl, by hub id through the cache, decodes; it encodes nothing."""
    from diffusers import AutoencoderTiny

    from models.vae import TinyDecoder

    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--madebyollin--taesdxl"
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4
                    ).save_pretrained(snapshot / "snapshots" / SNAPSHOT)
    (snapshot / "refs").mkdir(exist_ok=True)
    (snapshot / "refs" / "main").write_text(SNAPSHOT)
    _, cfg, codec = load(["--model_id", str(sdxl_folder), "--sdxl", "--tiny_vae", "--train_prompt_path",
                          str(sdxl_folder / "prompts.txt")])
    assert isinstance(codec, TinyDecoder) and codec.decode(torch.randn(1, 4, 8, 8)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="only decodes"):
        codec.encode(torch.zeros(1, 3, 64, 64))


def test_lora_generators_export_to_dmd2s_lora_file_and_sample_from_it(sd_folder, sd_generator, tmp_path):
    """preprocessing/extract_lora_module.py (DMD2's flags) writes the adapters in kohya's names with their alpha, as
    DMD2's extract_lora_module.py; sample.py --ckpt FILE --model_id BASE fuses them into the base UNet (diffusers'
    fuse_lora at scale 1) and samples what the checkpoint itself samples."""
    from safetensors.torch import load_file

    import sample
    from evaluations.prompt_cli import load_text_generator, sample_prompts
    from preprocessing import extract_lora_module

    out = tmp_path / "lora.safetensors"
    extract_lora_module.main(extract_lora_module.parse_args([
        "--original_model_path", str(sd_generator), "--output_model_path", str(out), "--lora_rank", "4"]))
    lora = load_file(out)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"} <= set(lora)
    assert float(lora[f"{key}.alpha"]) == 8.0 and lora[f"{key}.lora_down.weight"].shape[0] == 4
    with pytest.raises(ValueError, match="have rank \\[4\\]"):
        extract_lora_module.main(extract_lora_module.parse_args([
            "--original_model_path", str(sd_generator), "--output_model_path", str(tmp_path / "x.safetensors")]))

    prompts = ["a cat", "a red disc"]
    ours = sample.parse_args(["--ckpt", str(sd_generator), "--prompt", "x"])
    model, encoder, _, abar = load_text_generator(ours, torch.device("cpu"))
    theirs = sample.parse_args(["--ckpt", str(out), "--model_id", str(sd_folder), "--num_step", "4", "--prompt", "x"])
    fused, *_ = load_text_generator(theirs, torch.device("cpu"))
    torch.testing.assert_close(sample_prompts(fused, encoder, abar, prompts, seed=1),
                               sample_prompts(model, encoder, abar, prompts, seed=1), atol=1e-5, rtol=1e-5)


def test_watch_text_scores_a_run_as_dmd2s_test_folder_scripts(sd_folder, sd_generator, tmp_path, monkeypatch,
                                                              tiny_clip):
    """python -m evaluations.watch_text (DMD2's test_folder_sd.py flags) on this repository's run folder and on a
    DMD2 checkpoint folder: the first captions in batches, batch i's noise from seed i, FID against the reference
    folder and the CLIP score into stats.json, a grid; scored checkpoints are skipped on the next start."""
    import json

    from eval_stand_in import StandInInception, random_images
    from PIL import Image

    import evaluations.coco
    import evaluations.inception
    import sample
    from diffusion.denoiser import DDPMDenoiser
    from diffusion.pipeline import few_step_sample
    from evaluations import watch_text
    from evaluations.prompt_cli import load_text_generator

    monkeypatch.setattr(evaluations.inception, "load_inception", lambda *a, **k: StandInInception())
    monkeypatch.setattr(evaluations.coco, "load_clip", lambda *a, **k: tiny_clip)
    (tmp_path / "captions.txt").write_text("a cat\na red disc\ntwo dogs\na kitchen\nunused\n")
    ref = tmp_path / "val2014"
    ref.mkdir()
    for i, image in enumerate(random_images(4, size=64, seed=5)):
        Image.fromarray(image).save(ref / f"{i}.png")
    flags = ["--anno_path", str(tmp_path / "captions.txt"), "--ref_dir", str(ref), "--eval_res", "32",
             "--total_eval_samples", "4", "--eval_batch_size", "2", "--clip_score", "--once", "--pred_eps"]
    run = sd_generator.parent.parent
    stats = watch_text.main(watch_text.parse_args(["--folder", str(run), *flags]))
    (entry,) = stats.values()
    assert set(entry) == {"fid", "clip_score"} and all(np.isfinite(v) for v in entry.values())
    assert json.loads((run / "stats.json").read_text()) == stats and (run / "eval_grid_000002.png").is_file()

    args = watch_text.parse_args(["--folder", str(run), *flags])
    images, xl = watch_text.generate(sd_generator, args, ["a cat", "a red disc"], torch.device("cpu"))
    model, encoder, codec, abar = load_text_generator(sample.parse_args(["--ckpt", str(sd_generator), "--prompt", "x"]),
                                                      "cpu")
    torch.manual_seed(10)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # batch 0: seed 0
    x0 = few_step_sample(DDPMDenoiser(model, abar), noise, encoder(["a cat", "a red disc"]), model.generator_sigmas,
                         unit_noise=True)
    expected = ((codec.decode(x0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert not xl and np.array_equal(images, expected)

    dmd2 = tmp_path / "dmd2_run" / "checkpoint_model_000004"  # DMD2's own folder: its UNet on --model_id
    dmd2.mkdir(parents=True)
    torch.save({k.removeprefix("unet."): v for k, v in model.state_dict().items()}, dmd2 / "pytorch_model.bin")
    stats = watch_text.main(watch_text.parse_args(["--folder", str(dmd2.parent), *flags, "--model_id", str(sd_folder),
                                                   "--num_step", "4"]))
    assert list(stats) == [str(dmd2)] and np.isfinite(stats[str(dmd2)]["fid"])
    from evaluations.prompt_cli import (
        dmd2_base,  # without --model_id: the base DMD2's script for that UNet loads
    )

    assert dmd2_base({"add_embedding.linear_1.weight": 0}) == "stabilityai/stable-diffusion-xl-base-1.0"
    assert dmd2_base({"conv_in.weight": 0}) == "runwayml/stable-diffusion-v1-5"


def test_dmd2s_sdxl_demo_command_writes_its_images(sdxl_folder, tmp_path):
    """python -m demo.text_to_image_sdxl with DMD2's flags (one step at 399, fp16 where there is a GPU): a grid of
    --num_images images of the prompt from DMD2's UNet weights on --model_id."""
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from demo import text_to_image_sdxl

    weights = tmp_path / "dmd2_sdxl_1step_unet.bin"
    torch.save(UNet2DConditionModel.from_pretrained(sdxl_folder / "unet").state_dict(), weights)
    text_to_image_sdxl.main(text_to_image_sdxl.parse_args([
        "--num_step", "1", "--checkpoint_path", str(weights), "--conditioning_timestep", "399", "--model_id",
        str(sdxl_folder), "--num_images", "2", "--output", str(tmp_path / "demo.png")]))
    width, height = Image.open(tmp_path / "demo.png").size
    assert width >= 2 * 64 and height >= 64


def test_a_lora_runs_dmd2_folder_is_read_with_its_adapters_merged(sd_folder, sd_generator, tmp_path):
    """DMD2's own folder of a --generator_lora run holds peft's names (base layers and adapters): read with the
    adapters merged (rank from their shapes, --lora_alpha), it generates what the run's checkpoint generates."""
    from common.checkpoint import load_checkpoint
    from evaluations import watch_text

    folder = tmp_path / "lora_run" / "checkpoint_model_000002"
    folder.mkdir(parents=True)
    torch.save(load_checkpoint(sd_generator)["model"], folder / "pytorch_model.bin")
    args = watch_text.parse_args(["--folder", str(folder.parent), "--anno_path", "unused", "--model_id",
                                  str(sd_folder), "--num_step", "4", "--generator_lora", "--lora_alpha", "8"])
    theirs, _ = watch_text.generate(folder / "pytorch_model.bin", args, ["a cat", "two dogs"], torch.device("cpu"))
    ours, _ = watch_text.generate(sd_generator, args, ["a cat", "two dogs"], torch.device("cpu"))
    assert np.array_equal(theirs, ours)


def test_training_grids_read_the_generators_own_noise_table(sd_folder):
    """A Stable Diffusion generator's sample grids (training.visual) step it on its scheduler's abar table, as
    sample.py --prompt does, not on DiT's linear table (whose sigma 14.6 is SD's step 999 only on SD's table)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from diffusion.denoiser import DDPMDenoiser, ddpm_sigmas
    from diffusion.pipeline import few_step_sample
    from models.stable_diffusion import DiffusersEps
    from models.vae import PixelCodec
    from training.visual import diffusion_grid_images

    abar = DDPMScheduler.from_pretrained(sd_folder / "scheduler").alphas_cumprod.double().numpy()
    model = DiffusersEps(UNet2DConditionModel.from_pretrained(sd_folder / "unet"), 64, abar).eval()
    model.generator_sigmas = [float(ddpm_sigmas(abar)[999]), float(ddpm_sigmas(abar)[499])]
    noise, y = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        grid = diffusion_grid_images(model, PixelCodec(), noise, y, 1)
        torch.manual_seed(1)
        expected = few_step_sample(DDPMDenoiser(model, abar), noise, y, model.generator_sigmas, unit_noise=True)
    torch.testing.assert_close(grid, expected.float())


def test_sample_ddp_samples_a_prompts_file_in_the_official_layout(sd_folder, sd_generator, tmp_path):
    """sample_ddp.py --prompts: image j is prompt j's, from its batch's seed as sample.py --prompt draws it; the folder
    holds the prompts in order; the .npz only the images; a re-run skips what is written; labels are refused."""
    from PIL import Image

    import sample_ddp
    from common.monitor import to_uint8
    from evaluations.prompt_cli import load_text_generator, sample_prompts

    prompts = (sd_folder / "prompts.txt").read_text().splitlines()[:3]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    argv = ["--ckpt", str(sd_generator), "--prompts", str(tmp_path / "p.txt"), "--per-proc-batch-size", "2",
            "--sample-dir", str(tmp_path / "s"), "--global-seed", "5"]
    npz = sample_ddp.main(sample_ddp.parse_args(argv))
    folder = npz.with_suffix("")
    assert (folder / "prompts.txt").read_text().splitlines() == prompts
    with np.load(npz) as data:
        assert list(data.keys()) == ["arr_0"] and data["arr_0"].shape == (3, 64, 64, 3)
    args = sample_ddp.parse_args(argv)
    model, encoder, codec, abar = load_text_generator(args, torch.device("cpu"))
    with torch.no_grad():
        second = to_uint8(codec.decode(sample_prompts(model, encoder, abar, prompts[2:],
                                                      sample_ddp.batch_seed(5, 1, 1, 0))))
    assert np.array_equal(np.asarray(Image.open(folder / "000002.png")), second[0])
    written = (folder / "000000.png").stat().st_mtime_ns
    sample_ddp.main(sample_ddp.parse_args(argv))
    assert (folder / "000000.png").stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="read class labels"):
        sample_ddp.main(sample_ddp.parse_args([*argv, "--class-balanced"]))


def test_a_generator_exports_to_dmd2s_released_unet_form(sd_folder, sd_generator, tmp_path):
    """export_dmd2_unet.py: the UNet's own state dict with the LoRA adapters merged, float16 with --fp16 (DMD2's
    *_unet_fp16.bin), which diffusers' UNet loads strictly and sample.py samples on its base model."""
    from diffusers import UNet2DConditionModel

    import sample
    from evaluations.prompt_cli import generator_weights
    from preprocessing import export_dmd2_unet

    out = tmp_path / "dmd2_unet_fp16.bin"
    export_dmd2_unet.main(export_dmd2_unet.parse_args(["--ckpt", str(sd_generator), "--output", str(out), "--fp16"]))
    exported, merged = torch.load(out), generator_weights(str(sd_generator))[0]
    assert exported.keys() == merged.keys() and not any("lora" in k for k in exported)
    assert all(v.dtype == torch.float16 and torch.equal(v, merged[k].half()) for k, v in exported.items())
    UNet2DConditionModel.from_pretrained(sd_folder / "unet").load_state_dict(exported, strict=True)
    sample.main(sample.parse_args(["--ckpt", str(out), "--model_id", str(sd_folder), "--num_step", "4", "--prompt",
                                   "a cat", "--output", str(tmp_path / "g.png")]))
    assert (tmp_path / "g.png").is_file()
