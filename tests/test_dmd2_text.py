"""DMD2 on a text-to-image teacher: a tiny, randomly initialised Stable Diffusion folder (SD1.5 layout: a
diffusers UNet2DConditionModel, its scheduler, a CLIP text encoder and tokenizer, a VAE), prompts and DMD2's
LMDB of latents and prompts; and LoRA (peft) generators for any teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import train_dmd2
from common.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """unet/ scheduler/ text_encoder/ tokenizer/ vae/ as ``StableDiffusionPipeline.save_pretrained`` lays them out,
    with prompts.txt and DMD2's LMDB (laion_lmdb/) of latents and prompts: the run fixtures' teacher."""
    from fixtures.record_run_fixtures import sd_folder

    return sd_folder(tmp_path_factory.mktemp("sd"))


@pytest.mark.slow
def test_text_to_image_teacher_distils_few_step_with_gan_and_lora(sd_folder, tmp_path):
    """Four-step generation with backward simulation, the GAN head on the UNet's mid block, real latents and
    prompts from DMD2's LMDB, guidance with the empty prompt, LoRA adapters on the generator; the generator
    is saved as DMD2 saves it (the UNet's own state dict), and the run resumes exactly, with the UNets' gradient
    checkpointing on; a DMD2 checkpoint folder of it (the UNets' own names) continues with --ckpt_only_path."""
    common = ["--teacher", str(sd_folder), "--train_prompt_path", str(sd_folder / "prompts.txt"),
              "--real_image_path", str(sd_folder / "laion_lmdb"), "--batch_size", "2", "--num_workers", "0",
              "--real_guidance_scale", "1.75", "--denoising", "--num_denoising_step", "4", "--backward_simulation",
              "--cls_on_clean_image", "--gen_cls_loss", "--gen_cls_loss_weight", "5e-3",
              "--guidance_cls_loss_weight", "1e-2", "--generator_lora", "--lora_rank", "4", "--warmup_step", "0",
              "--generator_lr", "1e-3", "--guidance_lr", "1e-3", "--dfake_gen_update_ratio", "2",
              "--wandb_iters", "2", "--log_iters", "2", "--gradient_checkpointing", "--resolution", "64",
              "--latent_resolution", "8", "--latent_channel", "4"]
    train_dmd2.main(train_dmd2.parse_args([*common, "--output_path", str(tmp_path / "a"), "--train_iters", "4"]))
    (run,) = list((tmp_path / "a").iterdir())
    ckpt = load_checkpoint(run / "checkpoints" / "0000004.pt")
    assert any(k.startswith("conv_in.") for k in ckpt["model"]) and not any(k.startswith("unet.") for k in ckpt["model"])
    assert any("lora_A" in k for k in ckpt["model"])
    assert ckpt["generator_sigmas"] == pytest.approx(sorted(ckpt["generator_sigmas"], reverse=True))
    assert len(ckpt["generator_sigmas"]) == 4
    assert {k.split(".")[0] for k in ckpt["guidance"]} == {"fake_unet", "cls_pred_branch"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_dm"]) and np.isfinite(r["guidance_cls_loss"]) for r in records)
    assert (run / "samples" / "0000004.png").is_file()

    train_dmd2.main(train_dmd2.parse_args([*common, "--output_path", str(tmp_path / "b"), "--train_iters", "2"]))
    (first,) = list((tmp_path / "b").iterdir())
    train_dmd2.main(train_dmd2.parse_args([*common, "--output_path", str(tmp_path / "b"), "--train_iters", "4",
                                           "--checkpoint_path", str(first / "checkpoints" / "0000002.pt")]))
    resumed = load_checkpoint(first / "checkpoints" / "0000004.pt")
    for key in ("model", "guidance"):
        assert all(torch.equal(ckpt[key][k], resumed[key][k]) for k in ckpt[key]), key

    folder = tmp_path / "dmd2" / "checkpoint_model_000004"  # DMD2's layout: UNet names, the teacher beside
    folder.mkdir(parents=True)
    torch.save(ckpt["model"], folder / "pytorch_model.bin")
    guidance = {k.replace("fake_unet.unet.", "fake_unet."): v for k, v in ckpt["guidance"].items()}
    real = {k.replace("fake_unet.", "real_unet."): v for k, v in guidance.items() if k.startswith("fake_unet.")}
    torch.save({**guidance, **real}, folder / "pytorch_model_1.bin")
    train_dmd2.main(train_dmd2.parse_args([*common, "--output_path", str(tmp_path / "c"), "--train_iters", "5",
                                           "--ckpt_only_path", str(folder), "--no_save"]))
    (continued,) = list((tmp_path / "c").iterdir())
    assert [json.loads(line)["step"] for line in (continued / "metrics.jsonl").read_text().splitlines()] == [5]


def test_merged_lora_generator_equals_the_adapted_one():
    """sample.py reads a LoRA generator by merging W + (alpha / r) B A into each layer: same outputs."""
    from peft import LoraConfig, inject_adapter_in_model

    from models import create_model
    from models.pretrained import merge_lora

    torch.manual_seed(0)
    plain = create_model("DiT-Ti/4", input_size=16, num_classes=10, in_channels=3).eval()
    adapted = create_model("DiT-Ti/4", input_size=16, num_classes=10, in_channels=3).eval()
    adapted.load_state_dict(plain.state_dict())
    targets = [n for n, m in adapted.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets), adapted)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # peft starts B at zero
    plain.load_state_dict(merge_lora(adapted.state_dict(), 8 / 4))
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, y), adapted(x, t, y), rtol=1e-4, atol=1e-5)


def test_real_guidance_defaults_to_6_for_text_teachers_only(sd_folder, trained_run):
    """Without --real_guidance_scale: train_sd.py's 6 for a text-to-image teacher; train_edm.py never guides the
    real score, so a class-conditional teacher gets 1, even one with a null class (the DiT here)."""
    from methods.dmd2_cli import build_method, load_teacher, parse_args

    prompts = ["--train_prompt_path", str(sd_folder / "prompts.txt")]
    for flags, expected in (([str(sd_folder), *prompts], 6.0), ([str(trained_run / "checkpoints" / "0000020.pt")], 1.0)):
        args = parse_args(["--teacher", *flags])
        t, cfg, codec = load_teacher(args, torch.device("cpu"))
        cfg.update(latent_channels=codec.latent_channels, latent_size=cfg["image_size"] // codec.downsample)
        method = build_method(args, t, cfg, codec, lambda b: (None, None), lambda n, d: torch.zeros(n, dtype=torch.long),
                              torch.device("cpu"), 2)
        assert t.null is not None and args.real_guidance_scale == method.cfg_scale == expected, flags
