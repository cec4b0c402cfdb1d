"""What one DMD2 training step updates, and how (``methods/dmd2.py`` through ``train_dmd2.py``'s flags): the
generator turn and the guidance turn, the update ratio, gradient clipping, the generator's inputs, the signs of
the DM and GAN losses in the step, and the EDM adapter's bottleneck and fake-score loss, against closed forms.
Every test here catches a one-line mistake of ``tests/mutants.py`` that the rest of the suite let pass."""

from __future__ import annotations

import pytest
import torch

from common.setup import setup_accelerator
from diffusion.denoiser import noised
from loss.dmd import distribution_matching_loss
from methods.dmd2_cli import build_method, load_teacher, parse_args, validate
from training.engine import Engine

CPU = torch.device("cpu")
LR = 1e-3


@pytest.fixture(scope="module")
def checkpoint(trained_run):
    return trained_run / "checkpoints" / "0000020.pt"


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """The tiny DiT teacher, loaded once for the module (build_method copies it; it never trains)."""
    return load_teacher(parse_args(["--teacher", str(checkpoint)]), CPU)


def build(loaded, checkpoint, *flags: str, batch: int = 4, shift: float = 0.1):
    """The method as train_dmd2.py builds it from ``flags`` (learning rates 1e-3, no guidance unless given), its
    data the batch itself. ``shift``: the fake score's eps prediction is raised by it everywhere, so that its x0
    (``sqrt(1 + s^2) x - s eps``) lies ``s * shift`` below the teacher's and the DM loss has a known direction."""
    args = parse_args(["--teacher", str(checkpoint), "--generator_lr", str(LR), "--guidance_lr", str(LR),
                       "--real_guidance_scale", "1", *flags])
    validate(args)
    teacher, cfg, codec = loaded
    torch.manual_seed(0)  # the GAN head's initialisation
    method = build_method(args, teacher, {**cfg, "latent_channels": 3, "latent_size": 16}, codec, lambda b: b,
                          lambda n, device: torch.zeros(n, dtype=torch.long), CPU, batch)
    with torch.no_grad():
        method.modules["guidance"].fake_unet.final_layer.linear.bias += shift
    return method


def engine_for(method) -> Engine:
    return Engine(setup_accelerator("no", "none"), method)


def step(engine: Engine, batch=(None, None), *, at: int = 0, seed: int = 0) -> dict:
    """One ``train_step`` at engine step ``at`` with the random draws of ``seed``."""
    engine.steps = at
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in engine.method.train_step(engine, batch).items()}


def weights(module) -> dict[str, torch.Tensor]:
    """The weights that train (a DiT's fixed position table does not)."""
    return {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}


def real_batch(n: int = 4, value: float | None = None):
    torch.manual_seed(1)
    images = torch.randn(n, 3, 16, 16) if value is None else torch.full((n, 3, 16, 16), value)
    return images, torch.zeros(n, dtype=torch.long)


def generated(method, n: int = 4, seed: int = 5) -> torch.Tensor:
    """The generator's samples from the noise of ``seed``."""
    with torch.no_grad():
        torch.manual_seed(seed)
        x_vp, sigma = method.generator_input(method.modules["model"], n, None, None, CPU)
        return method.generate(method.modules["model"], x_vp, sigma, torch.zeros(n, dtype=torch.long))


def realism(method, images: torch.Tensor) -> float:
    """The GAN head's mean realism logit of clean ``images`` (class 0)."""
    with torch.no_grad():
        zeros = torch.zeros(len(images), dtype=torch.long)
        return method.modules["guidance"](method.teacher, images, zeros, mode="logits", index=zeros).mean().item()


def record_calls(monkeypatch, obj, name: str) -> list[tuple[tuple, object]]:
    """``obj.name`` still runs, and each call's arguments and result are appended to the returned list."""
    calls, original = [], getattr(obj, name)
    monkeypatch.setattr(obj, name, lambda *args: calls.append((args, original(*args))) or calls[-1][1])
    return calls


def test_max_grad_norm_clips_the_generator_and_the_guidance_updates(loaded, checkpoint):
    """--max_grad_norm reaches both optimizer steps. AdamW's first update is lr * g / (|g| + 1e-8) after the weight
    decay: lr for every weight with a gradient well above 1e-8, unclipped (--max_grad_norm 1e6); a gradient clipped
    to a total norm of 1e-12, far below Adam's eps, moves none by more than 1e-3 lr."""
    moved = {}
    for norm in ("1e-12", "1e6"):
        method = build(loaded, checkpoint, "--max_grad_norm", norm)
        before = {key: weights(method.modules[key]) for key in ("model", "guidance")}
        step(engine_for(method))
        for key, old in before.items():
            new = weights(method.modules[key])
            # the Adam part of the update: what is left after the decoupled weight decay (1 - lr * 0.01)
            change = torch.cat([(new[k] - old[k] * (1 - LR * 0.01)).abs().flatten() for k in old])
            moved[key, norm] = int((change > 0.5 * LR).sum()), (change.max() / LR).item()
    for key in ("model", "guidance"):
        assert moved[key, "1e6"][0] > 1000 and moved[key, "1e6"][1] > 0.99, moved  # measured: 14396 and 11149 weights
        assert moved[key, "1e-12"][1] < 1e-3, moved  # measured: at most 7e-6 lr


def test_the_guidance_update_ignores_the_generator_losses(loaded, checkpoint):
    """The guidance model is frozen in the generator turn: its update is bit-identical whatever --dm_loss_weight
    and --gen_cls_loss_weight (the GAN loss's gradient reaches the head and the fake score when unfrozen)."""
    after = []
    for dm, gen_cls in (("1", "0.1"), ("5", "20")):
        method = build(loaded, checkpoint, "--gan_classifier", "--dm_loss_weight", dm, "--gen_cls_loss_weight", gen_cls)
        record = step(engine_for(method), real_batch())
        assert record["gen_cls_loss"] > 0 and record["loss_dm"] > 0
        after.append(weights(method.modules["guidance"]))
    assert all(torch.equal(after[0][k], after[1][k]) for k in after[0])


def test_the_generator_updates_every_ratio_steps_and_the_guidance_every_step(loaded, checkpoint):
    """--dfake_gen_update_ratio 3: the generator turn at steps 0 and 3 of 0..4, the guidance turn at all five;
    a step leaves no gradient behind on either network."""
    method = build(loaded, checkpoint, "--dfake_gen_update_ratio", "3")
    engine = engine_for(method)
    generator, guidance = method.modules["model"], method.modules["guidance"]
    updated, trained = [], []
    for at in range(5):
        before = weights(generator), weights(guidance)
        record = step(engine, at=at, seed=at)
        after = weights(generator), weights(guidance)
        changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(before, after)]
        assert changed[0] == ("generator_loss" in record), at
        updated += [at] * changed[0]
        trained += [at] * changed[1]
        assert all(p.grad is None for net in (generator, guidance) for p in net.parameters()), at
    assert updated == [0, 3] and trained == [0, 1, 2, 3, 4]


def test_the_dm_gradient_moves_the_generated_x_toward_the_teachers_x0(loaded, checkpoint):
    """With the fake score's x0 s * 0.1 below the teacher's (the level s drawn per sample), the DM loss's gradient
    is (x0_fake - x0_real) / mean|x - x0_real| / numel: negative, and the same for every pixel of a sample, so a
    descent step raises every pixel; a generator step of the method raises its output."""
    method = build(loaded, checkpoint)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    torch.manual_seed(0)
    method.generator_losses(method.modules["guidance"], x, torch.zeros(4, dtype=torch.long))[0].backward()
    grad = x.grad.flatten(1)
    assert (grad < 0).all()
    torch.testing.assert_close(grad, grad[:, :1].expand_as(grad), rtol=1e-3, atol=0)
    before = generated(method)
    step(engine_for(method))
    rise = (generated(method) - before).mean().item()
    assert rise > 0.01, rise  # measured: 0.41


def test_dm_loss_weight_scales_the_dm_gradient(loaded, checkpoint):
    """--dm_loss_weight 3: the generator's gradient from the same draws is 3 times that of weight 1 (the DM loss
    itself, non-zero here, is the same)."""
    grads, dm = [], []
    torch.manual_seed(4)
    x0 = torch.randn(4, 3, 16, 16)
    for weight in ("1", "3"):
        method = build(loaded, checkpoint, "--dm_loss_weight", weight)
        x = x0.clone().requires_grad_(True)
        torch.manual_seed(0)
        total, losses = method.generator_losses(method.modules["guidance"], x, torch.zeros(4, dtype=torch.long))
        total.backward()
        grads.append(x.grad)
        dm.append(losses["loss_dm"].detach())
    assert dm[0] > 0 and torch.equal(dm[0], dm[1])
    torch.testing.assert_close(grads[1], 3 * grads[0])


def test_real_guidance_scale_guides_the_teacher_in_the_dm_loss(checkpoint, monkeypatch):
    """The DM loss reads the teacher guided by --real_guidance_scale (x0_u + s (x0_c - x0_u)) against the unguided
    fake score, at the noised sample and level it drew: on a teacher whose classes matter, the loss is
    distribution_matching_loss(x, teacher.x0(.., s), fake x0) at those inputs."""
    loaded = load_teacher(parse_args(["--teacher", str(checkpoint)]), CPU)
    teacher = loaded[0]
    with torch.no_grad():  # the 20-step teacher barely reads its class; make it read it
        torch.manual_seed(3)
        teacher.model.final_layer.linear.weight.normal_(0, 0.1)
        teacher.model.final_layer.adaLN_modulation[1].weight.normal_(0, 0.1)
        teacher.model.y_embedder.embedding_table.weight.normal_(0, 1.0)
    method = build(loaded, checkpoint, "--real_guidance_scale", "3", shift=0.0)
    fake = method.modules["guidance"].fake_unet
    calls, x0 = [], teacher.x0
    monkeypatch.setattr(teacher, "x0", lambda net, x_vp, sigma, y, *a: calls.append((net, x_vp, sigma, y)) or
                        x0(net, x_vp, sigma, y, *a))
    x, y = torch.randn(4, 3, 16, 16, requires_grad=True), torch.arange(4)
    torch.manual_seed(0)
    _, losses = method.generator_losses(method.modules["guidance"], x, y)
    (_, x_t, sigma, _), _ = calls
    real, unguided, fake_x0 = (x0(net, x_t, sigma, y, s) for net, s in ((teacher.model, 3.0), (teacher.model, 1.0),
                                                                          (fake, 1.0)))
    assert (real - unguided).abs().mean() > 0.01  # the guidance matters here
    torch.testing.assert_close(losses["loss_dm"], distribution_matching_loss(x, real, fake_x0), rtol=1e-5, atol=0)


def test_the_guidance_turn_teaches_the_head_to_tell_real_from_generated(loaded, checkpoint):
    """The guidance turn adds --cls_loss_weight x (softplus(D(fake)) + softplus(-D(real))) to the fake score's loss
    (--guidance_cls_loss_weight with --cls_on_clean_image): one update raises the head's realism logit of real
    images and lowers that of the generator's samples (the generator does not train: ratio 100; it starts at sigma 1,
    so that its samples have the real images' scale)."""
    method = build(loaded, checkpoint, "--gan_classifier", "--cls_loss_weight", "0.3", "--guidance_cls_loss_weight",
                   "7", "--dfake_gen_update_ratio", "100", "--conditioning_sigma", "1")
    real, y = real_batch()
    fake = generated(method)
    before = realism(method, real), realism(method, fake)
    record = step(engine_for(method), (real, y), at=1)
    after = realism(method, real), realism(method, fake)
    assert after[0] > before[0] + 0.03 and after[1] < before[1] - 0.03, (before, after)  # measured: +0.13, -0.06
    torch.testing.assert_close(record["guidance_loss"], record["loss_fake_mean"] + 0.3 * record["guidance_cls_loss"])
    method = build(loaded, checkpoint, "--cls_on_clean_image", "--cls_loss_weight", "0.3", "--guidance_cls_loss_weight",
                   "7", "--dfake_gen_update_ratio", "100")
    record = step(engine_for(method), (real, y), at=1)
    torch.testing.assert_close(record["guidance_loss"], record["loss_fake_mean"] + 7 * record["guidance_cls_loss"])


def test_the_generator_gan_loss_raises_the_heads_realism_of_generated_images(loaded, checkpoint):
    """--gan_alone: a generator step on softplus(-D(G(z))) alone raises the head's realism logit of the generator's
    samples (the head stays fixed: --guidance_lr 0; the generator starts at sigma 1)."""
    method = build(loaded, checkpoint, "--gan_classifier", "--gan_alone", "--gen_cls_loss_weight", "1",
                   "--guidance_lr", "0", "--generator_lr", "1e-2", "--conditioning_sigma", "1")
    before = realism(method, generated(method))
    step(engine_for(method), real_batch())
    after = realism(method, generated(method))
    assert after > before + 0.05, (before, after)  # measured: +0.16


def test_the_generator_starts_from_pure_noise_at_its_conditioning_level(loaded, checkpoint):
    """--conditioning_sigma 1: the generator's input is noised(0, 1, eps) = eps / sqrt(2), at sigma 1."""
    method = build(loaded, checkpoint, "--conditioning_sigma", "1")
    x_vp, sigma = method.generator_input(method.modules["model"], 64, None, None, CPU)
    assert sigma.tolist() == [1.0] * 64
    assert abs(x_vp.std().item() - 0.5**0.5) < 0.02 and abs(x_vp.mean().item()) < 0.02


def test_the_few_step_generator_denoises_real_images_at_its_levels_and_pure_noise_at_the_top(loaded, checkpoint):
    """--denoising, two steps: each real image (all pixels 50) is noised at one of the two levels, as
    (50 + s eps) / sqrt(1 + s^2); at the top level the input is pure noise instead (mean 0)."""
    method = build(loaded, checkpoint, "--denoising", "--num_denoising_step", "2")
    top, low = method.generator_sigmas
    torch.manual_seed(0)
    x_vp, sigma = method.generator_input(method.modules["model"], 32, None, torch.full((32, 3, 16, 16), 50.0), CPU)
    at_top = sigma == top
    assert 0 < at_top.sum() < 32 and ((sigma == top) | (sigma == low)).all()
    means, stds = x_vp.flatten(1).mean(1), x_vp.flatten(1).std(1)
    expected = torch.where(at_top, 0.0, 50 / (1 + sigma**2).sqrt()).float()
    torch.testing.assert_close(means, expected, rtol=0, atol=0.2)
    torch.testing.assert_close(stds, (sigma / (1 + sigma**2).sqrt()).float(), rtol=0.1, atol=0)


def test_the_diffusion_gan_noises_the_heads_inputs_below_its_max_timestep(loaded, checkpoint):
    """--diffusion_gan --diffusion_gan_max_timestep 10: the head's levels are grid indices 0..9, its noise
    standard normal; the head reads noised(x, sigma, eps), so at the top level (pure noise) it cannot tell two
    images apart."""
    method = build(loaded, checkpoint, "--gan_classifier", "--diffusion_gan", "--diffusion_gan_max_timestep", "10",
                   "--conditioning_sigma", "1")
    like = torch.zeros(500, 3, 2, 2)
    index, eps = method.gan_noise(500, like)
    assert set(index.tolist()) == set(range(10)) and abs(eps.std().item() - 1) < 0.05
    real, y = real_batch()
    fake = generated(method)
    top, eps = torch.full((4,), 999), torch.randn(4, 3, 16, 16)
    guidance = method.modules["guidance"]
    with torch.no_grad():
        clean = guidance.logits(method.teacher, real, y, torch.zeros(4, dtype=torch.long), None) - \
            guidance.logits(method.teacher, fake, y, torch.zeros(4, dtype=torch.long), None)
        noised_apart = guidance.logits(method.teacher, real, y, top, eps) - guidance.logits(method.teacher, fake, y, top, eps)
    assert noised_apart.abs().max() < 0.02 * clean.abs().max(), (clean, noised_apart)  # measured: 0.002 x


def tiny_edm():
    from models.edm_unet import EDMPrecond

    torch.manual_seed(0)
    return EDMPrecond(16, 3, label_dim=10, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                      dropout=0.0)


def test_the_edm_bottleneck_reads_the_network_at_x0_plus_sigma_eps():
    """EDM networks take x0 + sigma eps, not DMD2's variance-preserving x_vp: the GAN head's features of
    noised(x0, sigma, eps) are the encoder output of net(x0 + sigma eps, sigma, y)."""
    from methods.dmd2_teacher import EDMTeacher

    net = tiny_edm()
    teacher = EDMTeacher(net)
    torch.manual_seed(1)
    x0, eps, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    sigma = torch.tensor([0.01, 0.5, 5.0, 80.0], dtype=torch.float64)
    with torch.no_grad():
        got = teacher.bottleneck(net, noised(x0, sigma, eps), sigma, y)
        want = net(x0 + sigma.float().view(-1, 1, 1, 1) * eps, sigma.float(), y, return_bottleneck=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid():
    """EDMTeacher.fake_score_loss: the network sees x0 + sigma eps at a level of the Karras grid (the whole grid),
    and its x0 error is weighted by 1 / sigma^2 + 1 / sigma_data^2 (sigma_data 0.25 here): a network off by
    one everywhere scores mean(1 / sigma^2 + 16)."""
    from methods.dmd2_teacher import EDMTeacher

    seen = []
    torch.manual_seed(2)
    x0 = torch.randn(512, 3, 2, 2)

    def net(x, sigma, y):
        seen.append((x, sigma))
        return x0 + 1

    teacher = EDMTeacher(torch.nn.Identity(), sigma_data=0.25)
    loss = teacher.fake_score_loss(net, x0, torch.zeros(512, dtype=torch.long))
    ((x, sigma),) = seen
    torch.testing.assert_close(loss, (sigma.double() ** -2 + 16).mean().float())
    assert torch.isin(sigma, teacher.sigmas.float()).all() and sigma.min() < 0.05 and sigma.max() > 20
    unit = (x - x0) / sigma.view(-1, 1, 1, 1)
    assert abs(unit.mean().item()) < 0.05 and abs(unit.std().item() - 1) < 0.05


def test_the_eps_fake_score_loss_of_a_diffusers_teacher_is_the_eps_mse():
    """DDPMTeacher without its own objective (a diffusers UNet): mean (eps_pred - eps)^2 at a level of its grid;
    on data x0 = 0 the exact predictor eps = x_vp sqrt(1 + s^2) / s scores 0, the zero predictor E[eps^2] = 1."""
    from diffusion.pipeline import base_alphas_cumprod
    from methods.dmd2_teacher import DDPMTeacher

    sigmas = DDPMTeacher(torch.nn.Identity(), base_alphas_cumprod()).sigmas

    def exact(x, t, y):
        s = sigmas[t.round().long()].view(-1, 1, 1, 1)
        return (x.double() * (1 + s**2).sqrt() / s).float()

    teacher = DDPMTeacher(torch.nn.Identity(), base_alphas_cumprod())
    torch.manual_seed(3)
    x0, y = torch.zeros(512, 3, 2, 2), torch.zeros(512, dtype=torch.long)
    assert teacher.fake_score_loss(exact, x0, y) < 1e-6  # measured: 3e-16
    assert abs(teacher.fake_score_loss(lambda x, t, y: torch.zeros_like(x), x0, y).item() - 1) < 0.05


def test_backward_simulation_trains_on_the_generators_own_x0_noised_once(loaded, checkpoint, monkeypatch):
    """--backward_simulation: after k simulated steps the generator's input is its own last x0 noised once at
    level k, noised(x0, s_k, eps): (x_vp sqrt(1 + s_k^2) - x0) / s_k is standard normal."""
    method = build(loaded, checkpoint, "--denoising", "--num_denoising_step", "4", "--backward_simulation")
    made, stds = record_calls(monkeypatch, method, "generate"), {}
    for seed in range(8):
        torch.manual_seed(seed)
        made.clear()
        x_vp, sigma = method.generator_input(method.modules["model"], 16, torch.zeros(16, dtype=torch.long), None, CPU)
        if made:
            s = sigma.double().view(-1, 1, 1, 1)
            stds[len(made)] = ((x_vp.double() * (1 + s**2).sqrt() - made[-1][1].double()) / s).std().item()
    assert len(stds) >= 2 and all(abs(v - 1) < 0.03 for v in stds.values()), stds  # measured: 0.99 to 1.00


def test_the_fake_score_learns_the_generators_samples(loaded, checkpoint, monkeypatch):
    """The guidance turn trains the fake score on the batch the generator made in that step (DMD2's fake score
    follows the generator), not on the real images, with and without a generator update."""
    method = build(loaded, checkpoint, "--dfake_gen_update_ratio", "2")
    made, trained = record_calls(monkeypatch, method, "generate"), record_calls(monkeypatch, method.teacher,
                                                                                 "fake_score_loss")
    engine = engine_for(method)
    for at in (0, 1):
        made.clear(), trained.clear()
        step(engine, real_batch(), at=at)
        assert len(made) == len(trained) == 1 and torch.equal(made[0][1].detach(), trained[0][0][1]), at


def test_the_few_step_generator_denoises_each_real_image_under_its_own_label(loaded, checkpoint, monkeypatch):
    """--denoising without backward simulation: the generator and the fake score read the real images' labels
    (1..4 here), not drawn ones (0)."""
    method = build(loaded, checkpoint, "--denoising", "--num_denoising_step", "2")
    made, trained = record_calls(monkeypatch, method, "generate"), record_calls(monkeypatch, method.teacher,
                                                                                 "fake_score_loss")
    labels = torch.arange(1, 5)
    step(engine_for(method), (real_batch()[0], labels))
    assert torch.equal(made[0][0][3], labels) and torch.equal(trained[0][0][2], labels)
