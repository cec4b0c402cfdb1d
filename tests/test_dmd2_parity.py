"""DMD2's own losses against this repository's: its Stable Diffusion path on the tiny random SD1.5 and SDXL models
(``SDGuidance``, ``SDUniModel``; tests/fixtures/record_dmd2_sd.py) and its ImageNet path on the tiny EDM network
(``EDMGuidance``; tests/fixtures/record_dmd2_edm.py), run with tianweiy/DMD2 at 8d8fa55 and their random draws
recorded; the same draws replayed here give the same noised latents, x0 estimates, DM loss and gradient, fake-score
loss and GAN-head input, to 1e-5."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from fixtures.record_dmd2_sd import FAKE_SCALE, Tape, scale_

REF = torch.load(Path(__file__).parent / "fixtures" / "dmd2_sd_reference.pt", weights_only=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from models.tiny_sd import build_sd, build_sdxl

    root = tmp_path_factory.mktemp("tiny-sd")
    return {"sd": build_sd(root / "sd"), "sdxl": build_sdxl(build_sd(root / "sdxl"))}


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str, tolerance: float = 1e-5) -> None:
    gap = float((ours.double() - theirs.double()).norm() / theirs.double().norm())
    assert gap <= tolerance, f"{what}: {gap:.1e} of its norm from DMD2's"


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_dm_and_fake_score_losses_are_dmd2s(folders, kind):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from diffusion.denoiser import noised
    from methods.dmd2 import DMD2Method, Guidance
    from methods.dmd2_teacher import DDPMTeacher
    from models.stable_diffusion import DiffusersEps, pack

    ref, folder = REF[kind], folders[kind]
    assert REF["fake_scale"] == FAKE_SCALE
    data = ref["inputs"]
    abar = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.double().numpy()
    real = DiffusersEps(UNet2DConditionModel.from_pretrained(folder / "unet"), 64, abar).eval()
    fake = copy.deepcopy(real)
    scale_(fake)
    xl = kind == "sdxl"
    y = pack(data["text_embedding"], data["pooled"]) if xl else data["text_embedding"]
    null = pack(data["uncond_embedding"][:1], torch.zeros_like(data["pooled"][:1])) if xl else data["uncond_embedding"][:1]
    teacher = DDPMTeacher(real, abar, null=null)
    method = types.SimpleNamespace(teacher=teacher, gan_alone=False, min_step=20, max_step=980,
                                   cfg_scale=REF["guidance"], dm_weight=1.0, gen_gan=False)
    x = data["latents"].clone().requires_grad_(True)
    with Tape(ref["tape"]) as tape:
        total, losses = DMD2Method.generator_losses(method, Guidance(fake), x, y)
        total.backward()
        loss_fake = teacher.fake_score_loss(fake, data["latents"], y)
    close(losses["loss_dm"], ref["loss_dm"], "the DM loss")
    close(x.grad, ref["dm_grad"], "the DM loss's gradient")
    close(loss_fake, ref["loss_fake"], "the fake score's loss")

    with Tape(ref["tape"]) as tape:  # the pieces: noising, guided real x0, fake x0 (DMD2's dm log)
        index = tape.take("randint", (2,), torch.long, "cpu")
        eps = tape.take("randn", (2, 4, 8, 8), torch.float32, "cpu")
    sigma = teacher.sigma(index)
    x_t = noised(data["latents"], sigma, eps)
    close(x_t, ref["noisy_latents"], "the noised latents")
    with torch.no_grad():
        close(teacher.x0(real, x_t, sigma, y, REF["guidance"]), ref["pred_real_image"], "the teacher's guided x0")
        close(teacher.x0(fake, x_t, sigma, y), ref["pred_fake_image"], "the fake score's x0")


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_the_gan_head_reads_and_is_dmd2s(folders, kind):
    """The head's input is DMD2's ``classify_forward`` bottleneck of the fake UNet: clean latents at timestep 0, and
    with --diffusion_gan latents noised at the drawn timestep; the head built for SD1.5's 8x8 and SDXL's 32x32
    bottleneck of 1280 channels is DMD2's cls_pred_branch layer for layer."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from fixtures.record_dmd2_sd import layout

    from diffusion.denoiser import noised
    from methods.dmd2_teacher import DDPMTeacher
    from models.discriminator import dmd2_classifier_head
    from models.stable_diffusion import DiffusersEps, pack

    ref, folder = REF[kind], folders[kind]
    data = ref["inputs"]
    abar = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.double().numpy()
    fake = DiffusersEps(UNet2DConditionModel.from_pretrained(folder / "unet"), 64, abar).eval()
    scale_(fake)
    y = pack(data["text_embedding"], data["pooled"]) if kind == "sdxl" else data["text_embedding"]
    teacher = DDPMTeacher(fake, abar)
    with torch.no_grad():
        zero = torch.zeros(2, dtype=torch.long)
        close(teacher.bottleneck(fake, data["latents"], teacher.sigma(zero), y), ref["rep_clean"], "the clean bottleneck")
        with Tape(ref["gan_tape"]):
            index = torch.randint(0, 1000, (2,))
            eps = torch.randn_like(data["latents"])
        sigma = teacher.sigma(index)
        close(teacher.bottleneck(fake, noised(data["latents"], sigma, eps), sigma, y), ref["rep_noisy"],
              "the noised bottleneck")
    with torch.device("meta"):
        assert layout(dmd2_classifier_head(1280, 32 if kind == "sdxl" else 8)) == ref["head"]


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_the_generator_turn_is_dmd2s(folders, kind):
    """DMD2's SDUniModel generator turn: unit noise read at the conditioning timestep (999; SDXL's one-step 399), the
    x0 the generator's eps gives, the DM loss of it and the gradient that reaches the generator, from the same
    prompts through this repository's prompt encoders (the empty prompt's embedding, SDXL's zeros as null)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from methods.dmd2 import DMD2Method, Guidance
    from methods.dmd2_teacher import DDPMTeacher
    from models.stable_diffusion import DiffusersEps, SDSource, TextEncoder, XLTextEncoder

    ref, folder = REF["generator"][kind], folders[kind]
    xl = kind == "sdxl"
    abar = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.double().numpy()
    real = DiffusersEps(UNet2DConditionModel.from_pretrained(folder / "unet"), 64, abar).eval()
    fake, generator = copy.deepcopy(real), copy.deepcopy(real).requires_grad_(True)
    scale_(fake)
    encoder = (XLTextEncoder if xl else TextEncoder)(SDSource(str(folder)), "cpu")
    y = encoder(REF["generator"]["prompts"])
    null = torch.zeros_like(y[:1]) if xl else encoder([""])
    teacher = DDPMTeacher(real, abar, null=null)
    method = types.SimpleNamespace(teacher=teacher, gan_alone=False, min_step=20, max_step=980,
                                   cfg_scale=REF["guidance"], dm_weight=1.0, gen_gan=False)
    sigma = teacher.sigma(torch.full((2,), ref["timestep"]))
    with Tape(ref["tape"]):
        x = DMD2Method.generate(method, generator, ref["noise"], sigma, y)  # unit noise: DMD2's SD generators
        total, losses = DMD2Method.generator_losses(method, Guidance(fake), x, y)
        total.backward()
    close(x, ref["image"], "the generated latents")
    close(losses["loss_dm"], ref["loss_dm"], "the DM loss")
    close(generator.unet.conv_in.weight.grad, ref["conv_in_grad"], "the generator's gradient")


EDM_REF = torch.load(Path(__file__).parent / "fixtures" / "dmd2_edm_reference.pt", weights_only=False)


def test_the_imagenet_paths_losses_are_dmd2s():
    """DMD2's EDMGuidance (tests/fixtures/record_dmd2_edm.py) on the tiny EDM network of edm_tiny_reference.pt: the
    Karras grid's levels, the noised latents on EDM's scale, both x0, the DM loss, the fake score's EDM-weighted
    loss and the bottleneck the GAN head reads agree to 1e-5 with the draws replayed (the DM gradient to 5e-5, see
    below); the head built for the ImageNet network's 768 x 8 x 8 bottleneck is DMD2's layer for layer."""
    from test_edm_unet import tiny_net

    from diffusion.denoiser import noised
    from methods.dmd2 import DMD2Method, Guidance
    from methods.dmd2_teacher import EDMTeacher
    from models.discriminator import dmd2_classifier_head

    ref = EDM_REF
    real = tiny_net()
    fake = copy.deepcopy(real)
    scale_(fake)
    teacher = EDMTeacher(real)
    latents, y = ref["inputs"]["latents"], ref["inputs"]["labels"].argmax(1)
    method = types.SimpleNamespace(teacher=teacher, gan_alone=False, min_step=20, max_step=980, cfg_scale=1.0,
                                   dm_weight=1.0, gen_gan=False)
    x = latents.clone().requires_grad_(True)
    with Tape(ref["tape"]):
        total, losses = DMD2Method.generator_losses(method, Guidance(fake), x, y)
        total.backward()
        loss_fake = teacher.fake_score_loss(fake, latents, y)
    close(losses["loss_dm"], ref["loss_dm"], "the DM loss")
    # DMD2's EDM path forms x - x0 in float32, here in float64; at the first draw's sigma 0.009 that difference is
    # small and the gradient divides by it: 1.9e-5 apart, while both x0 agree to 8e-8. From DMD2's own x0 the
    # gradient is the same to 1e-6:
    close(x.grad, ref["dm_grad"], "the DM loss's gradient", tolerance=5e-5)
    from loss.dmd import distribution_matching_loss

    again = latents.clone().requires_grad_(True)
    distribution_matching_loss(again, ref["pred_real_image"], ref["pred_fake_image"]).backward()
    close(again.grad, ref["dm_grad"], "the DM loss's gradient from DMD2's x0", tolerance=1e-6)
    close(loss_fake, ref["loss_fake"], "the fake score's loss")

    with Tape(ref["tape"]) as tape:
        index = tape.take("randint", (2,), torch.long, "cpu")
        eps = tape.take("randn", (2, 3, 8, 8), torch.float32, "cpu")
    sigma = teacher.sigma(index)
    x_t = noised(latents, sigma, eps)
    scale = torch.sqrt(1 + sigma.double() ** 2).view(-1, 1, 1, 1)
    close(x_t * scale, ref["noisy_latents"], "the noised latents (EDM's scale)")
    with torch.no_grad():
        close(teacher.x0(real, x_t, sigma, y), ref["pred_real_image"], "the teacher's x0")
        close(teacher.x0(fake, x_t, sigma, y), ref["pred_fake_image"], "the fake score's x0")
        zero = torch.zeros(2, dtype=torch.long)
        close(teacher.bottleneck(fake, latents, teacher.sigma(zero), y), ref["bottleneck"], "the clean bottleneck")
    from fixtures.record_dmd2_sd import layout

    with torch.device("meta"):
        assert layout(dmd2_classifier_head(768, 8)) == ref["head"]
