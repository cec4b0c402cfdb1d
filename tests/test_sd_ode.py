"""DMD2's SDXL one-step recipe before distribution matching, on the tiny random SDXL folder: the teacher's noise-image
pairs (generate_noise_image_pairs.py), DMD2's LMDB of them (create_lmdb_iterative.py), the regression pretraining
(train_sd_ode.py) with DMD2's loss, and its generator handed on to train_dmd2.py --generator_ckpt_path and sample.py.
piq's LPIPS reads random stand-ins for its two weight files from torch.hub's cache (the suite's TORCH_HOME)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

import train_sd_ode
from preprocessing import create_lmdb_iterative, generate_noise_image_pairs


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from fixtures.record_run_fixtures import sdxl_folder

    return sdxl_folder(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def piq_weights(tmp_path_factory):
    """Random weights under piq's two file names, where torch.hub looks for them (a TORCH_HOME of this module's own,
    so that other tests still find no VGG16 in the suite's)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.vgg16().state_dict(), folder / "vgg16-397923af.pth")
        torch.save([torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)], folder / "lpips_weights.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield folder


@pytest.fixture(scope="module")
def pairs(sdxl_folder, tmp_path_factory):
    """(pair files' folder, their LMDB): 4 pairs of 4 Euler steps at guidance 8."""
    root = tmp_path_factory.mktemp("pairs")
    torch.manual_seed(0)
    generate_noise_image_pairs.main(generate_noise_image_pairs.parse_args([
        "--folder", str(root / "pt"), "--prompt_path", str(sdxl_folder / "prompts.txt"), "--model_id",
        str(sdxl_folder), "--batch_size", "2", "--num_batches", "2", "--latent_resolution", "8",
        "--num_inference_steps", "4"]))
    create_lmdb_iterative.main(create_lmdb_iterative.parse_args(["--data_path", str(root / "pt"), "--lmdb_path",
                                                                 str(root / "lmdb")]))
    return root / "pt", root / "lmdb"


def test_pairs_are_the_pipelines_and_the_lmdb_holds_them(sdxl_folder, pairs):
    """The pair file holds DMD2's keys in float16; its images are diffusers' SDXL pipeline (Euler, trailing) run from
    its noise with zeros as the null condition; the LMDB returns the rows with SDXL's conditions packed."""
    from diffusers import EulerDiscreteScheduler

    from imagedata.lmdb import LMDBODEPairs
    from models.stable_diffusion import pack

    data = torch.load(pairs[0] / "noise_image_pairs_000.pt", weights_only=False)
    assert {k: v.shape for k, v in data.items()} == {"latents": (4, 4, 8, 8), "images": (4, 4, 8, 8),
                                                     "prompt_embeds_list": (4, 77, 64), "pooled_prompt_embeds": (4, 16)}
    assert all(v.dtype == np.float16 for v in data.values())
    pipe, encoder, xl = generate_noise_image_pairs.load_pipeline(
        generate_noise_image_pairs.parse_args(["--folder", "x", "--prompt_path", "x", "--model_id", str(sdxl_folder)]),
        torch.device("cpu"))
    assert xl and isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.scheduler.config.timestep_spacing == \
        "trailing"
    embeds, pooled = (torch.from_numpy(data[k][:2]).float() for k in ("prompt_embeds_list", "pooled_prompt_embeds"))
    images = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(embeds),
                  negative_pooled_prompt_embeds=torch.zeros_like(pooled), guidance_scale=8, num_inference_steps=4,
                  latents=torch.from_numpy(data["latents"][:2]).float(), output_type="latent").images
    # the file's embeddings are float16-rounded, those the pipeline ran on were not
    torch.testing.assert_close(images.half().numpy(), data["images"][:2], atol=1e-2, rtol=1e-2)
    dataset = LMDBODEPairs(pairs[1])
    assert len(dataset) == 4 and len(LMDBODEPairs(pairs[1], num_pairs=3)) == 3
    noise, image, y = dataset[3]
    assert torch.equal(noise, torch.from_numpy(data["latents"][3]).float())
    assert torch.equal(image, torch.from_numpy(data["images"][3]).float())
    expected = pack(torch.from_numpy(data["prompt_embeds_list"][3:]).float(),
                    torch.from_numpy(data["pooled_prompt_embeds"][3:]).float())[0]
    assert torch.equal(y, expected)
    with pytest.raises(ValueError, match="exists and is not empty"):
        create_lmdb_iterative.main(create_lmdb_iterative.parse_args(["--data_path", str(pairs[0]), "--lmdb_path",
                                                                     str(pairs[1])]))


class StepEngine:
    """What ``train_step`` asks of the engine, recording the loss."""

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        self.loss = loss

    def step(self, key, max_grad_norm=None):
        return None


def test_regression_loss_is_dmd2s(sdxl_folder, pairs, piq_weights):
    """train_sd_ode.py's loss equals DMD2's train_one_step written out: the UNet at timestep 399 on the unit noise
    with SDXL's added conditions, get_x0_from_noise in float64, both latents decoded at 1 / scaling_factor, piq's
    LPIPS (average pooling) of the images mapped to [0, 1]."""
    import piq
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from training.fit import Process

    args = train_sd_ode.parse_args(["--model_id", str(sdxl_folder), "--sdxl", "--ode_pair_path", str(pairs[1]),
                                    "--conditioning_timestep", "399", "--grid_size", "1"])
    train_sd_ode.validate(args)
    method, data = train_sd_ode.build_method(args, Process(torch.device("cpu"), 0, 1))
    batch = [torch.stack(t) for t in zip(*(data.dataset[i] for i in range(2)))]
    engine = StepEngine()
    method.train_step(engine, batch)

    unet = UNet2DConditionModel.from_pretrained(sdxl_folder / "unet")
    vae = AutoencoderKL.from_pretrained(sdxl_folder / "vae")
    abar = DDPMScheduler.from_pretrained(sdxl_folder / "scheduler").alphas_cumprod.double()
    noise, images, y = batch
    embeds, pooled = y[:, :-16].reshape(2, 77, 64), y[:, -16:]
    t = torch.full((2,), 399, dtype=torch.long)
    added = {"time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32), "text_embeds": pooled}
    eps = unet(noise, t, embeds, added_cond_kwargs=added).sample
    a = abar[t].view(-1, 1, 1, 1)
    x0 = ((noise.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()).float()
    decode = lambda z: vae.decode(z / vae.config.scaling_factor).sample.float()  # noqa: E731
    lpips = piq.LPIPS(replace_pooling=True, reduction="none")
    expected = lpips(decode(x0) * 0.5 + 0.5, decode(images) * 0.5 + 0.5).mean()
    torch.testing.assert_close(engine.loss, expected, atol=1e-5, rtol=1e-5)
    engine.loss.backward()  # the gradient reaches the generator through the decoder
    assert method.modules["model"].unet.conv_in.weight.grad.abs().sum() > 0


def test_pretrained_generator_hands_on(sdxl_folder, pairs, piq_weights, tmp_path):
    """Two steps with DMD2's checkpoint layout: the DMD2 folder and the checkpoint sample the same image with
    sample.py, and train_dmd2.py's --generator_ckpt_path starts its generator from either."""
    import sample
    from methods.dmd2_weights import generator_weights

    train_sd_ode.main(train_sd_ode.parse_args([
        "--model_id", str(sdxl_folder), "--sdxl", "--ode_pair_path", str(pairs[1]), "--conditioning_timestep", "399",
        "--ode_batch_size", "2", "--train_iters", "2", "--log_iters", "2", "--wandb_iters", "2", "--grid_size", "1",
        "--num_workers", "0", "--warmup_step", "0", "--output_path", str(tmp_path), "--checkpoint_layout", "dmd2"]))
    run = next(tmp_path.glob("000-*"))
    assert (run / "samples" / "0000002.png").is_file() and (run / "loss.png").is_file()
    ckpt, folder = run / "checkpoints" / "0000002.pt", run / "checkpoint_model_000002"
    theirs = generator_weights(str(folder))
    assert "conv_in.weight" in theirs  # DMD2's names: the UNet's own state dict
    assert all(torch.equal(theirs[k], v) for k, v in generator_weights(str(ckpt)).items())
    outputs = []
    for argv in (["--ckpt", str(ckpt)], ["--ckpt", str(folder / "pytorch_model.bin"), "--model_id", str(sdxl_folder),
                                         "--num_step", "1", "--conditioning_timestep", "399"]):
        out = tmp_path / f"{len(outputs)}.png"
        sample.main(sample.parse_args([*argv, "--prompt", "a cat", "--output", str(out)]))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_vae_latents_of_image_shards_make_dmd2s_latents_lmdb(sdxl_folder, tmp_path):
    """generate_vae_latents.py: each shard's images (Lanczos-resized with --resize) encoded as a posterior sample
    times the scaling factor, float16, beside the prompts; create_lmdb_iterative.py makes the LMDB train_dmd2.py
    reads as --real_image_path; a shard already written is kept on a second run."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from imagedata.lmdb import LMDBLatentsPrompts
    from preprocessing import generate_vae_latents

    rng = np.random.default_rng(0)
    (tmp_path / "shards").mkdir()
    for k in range(2):
        torch.save({"images": torch.from_numpy(rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)),
                    "prompts": [f"shard {k} image {i}" for i in range(3)]}, tmp_path / "shards" / f"{k}.pt")
    argv = ["--folder", str(tmp_path / "shards"), "--output_folder", str(tmp_path / "latents"), "--model_id",
            str(sdxl_folder), "--image_size", "64", "--resize", "--batch_size", "2"]
    generate_vae_latents.main(generate_vae_latents.parse_args(argv))
    written = (tmp_path / "latents" / "vae_latents_001.pt").stat().st_mtime_ns
    generate_vae_latents.main(generate_vae_latents.parse_args(argv))
    assert (tmp_path / "latents" / "vae_latents_001.pt").stat().st_mtime_ns == written
    create_lmdb_iterative.main(create_lmdb_iterative.parse_args(["--data_path", str(tmp_path / "latents"),
                                                                 "--lmdb_path", str(tmp_path / "lmdb")]))
    data = LMDBLatentsPrompts(tmp_path / "lmdb")
    assert len(data) == 6 and data[4][1] == "shard 1 image 1"

    vae = AutoencoderKL.from_pretrained(sdxl_folder / "vae")
    shard = torch.load(tmp_path / "shards" / "1.pt")
    image = shard["images"][1].permute(1, 2, 0).numpy()
    x = torch.from_numpy(np.array(Image.fromarray(image).resize((64, 64), Image.LANCZOS))).permute(2, 0, 1)
    with torch.no_grad():
        posterior = vae.encode((x.float() / 255 * 2 - 1)[None]).latent_dist
    z = (data[4][0] / vae.config.scaling_factor - posterior.mean[0]) / posterior.std[0]
    assert data[4][0].shape == (4, 8, 8) and z.abs().max() < 6  # a posterior sample (float16-rounded)
    with pytest.raises(ValueError, match="--resize needs --image_size"):
        generate_vae_latents.main(generate_vae_latents.parse_args(argv[:6] + ["--resize"]))


@pytest.mark.slow
def test_dmd2s_ode_pretraining_script_runs(sdxl_folder, pairs, piq_weights, tmp_path):
    """DMD2's experiments/sdxl/sdxl_lr1e-5_8node_ode_pretraining_10k_cond399.sh as the table holds it, on one
    process; substituted: the model (the tiny SDXL folder, 64 px), the pairs, paths and steps. --tiny_vae reads a
    random TAESD under madebyollin/taesdxl in the Hugging Face cache."""
    import os

    from diffusers import AutoencoderTiny
    from originals import ROWS
    from test_originals_commands import split

    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--madebyollin--taesdxl"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                        num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4
                        ).save_pretrained(snapshot / "snapshots" / ("0" * 40))
    (snapshot / "refs").mkdir(exist_ok=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (row,) = [r for r in ROWS if r.file.endswith("ode_pretraining_10k_cond399.sh")]
    command = row.ours
    for old, new in {"--train_iters 100000000": "--train_iters 2", "--log_iters 1000": "--log_iters 2",
                     "--resolution 1024": "--resolution 64", "--wandb_iters 250": "--wandb_iters 2",
                     "--num_ode_pairs 10000": "--num_ode_pairs 4", "--ode_batch_size 4": "--ode_batch_size 2",
                     '"stabilityai/stable-diffusion-xl-base-1.0"': str(sdxl_folder),
                     "$CHECKPOINT_PATH/sdxl_ode_pair_10k_lmdb/": str(pairs[1]), "$CHECKPOINT_PATH": str(tmp_path),
                     " --use_fp16": ""}.items():
        assert old in command, old
        command = command.replace(old, new)
    module, argv = split(command)
    assert module == "train_sd_ode"
    # no wandb run: one started in this process (even disabled) stays its mode for the rest of the suite
    train_sd_ode.main(train_sd_ode.parse_args([*argv, "--num_workers", "0", "--warmup_step", "0", "--report_to",
                                               "none"]))
    (run,) = list((tmp_path / "sdxl_lr1e-5_8node_ode_pretraining_10k_cond399").iterdir())
    assert (run / "checkpoints" / "0000002.pt").is_file()
