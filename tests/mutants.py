"""Plausible one-line mistakes in the library, each with the test that must catch it (docs/testing.md).

    python tests/mutants.py            # every mistake
    python tests/mutants.py NAME ...   # some of them

Each mistake is applied to a copy of the repository's tracked files (the checkout is never touched), the
named tests run there, and the mistake counts as caught when they fail. Exit status 1 when one survives.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # the file, relative to the repository root
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple[str, ...]  # pytest node ids (or -k expressions after "-k")


R, E, D, A, S, N = ("tests/test_train_repae.py", "tests/test_engine.py", "tests/test_dmd2_updates.py",
                    "tests/test_sampling_oracle.py", "tests/test_train.py", "tests/test_denoiser.py")

MUTANTS = [
    # REPA-E's three updates (methods/repae.py, loss/autoencoder.py)
    Mutant("repae-gan-sign", "loss/autoencoder.py", 'losses["gan"] = -discriminator(recon)',
           'losses["gan"] = discriminator(recon)',
           (f"{R}::test_the_vae_step_raises_the_discriminators_score_of_its_reconstructions",)),
    Mutant("repae-disc-real-branch", "loss/autoencoder.py", "discriminator(x.float().detach(), recon.float().detach())",
           "discriminator(recon.float().detach(), recon.float().detach())",
           (f"{R}::test_the_discriminator_step_raises_its_score_of_images_and_lowers_that_of_reconstructions",)),
    Mutant("repae-disc-trainable-in-vae-step", "methods/repae.py", "        self.trainable(disc, False)\n",
           "        self.trainable(disc, True)\n",
           (f"{R}::test_the_vae_losses_leave_the_discriminator_and_the_sit_updates_unchanged",)),
    Mutant("repae-sit-trainable-in-vae-step", "methods/repae.py", "self.trainable(sit, False).eval()",
           "self.trainable(sit, True).eval()",
           (f"{R}::test_the_vae_losses_leave_the_discriminator_and_the_sit_updates_unchanged",)),
    Mutant("repae-bn-eval-in-sit-step", "methods/repae.py", "self.trainable(sit, True).train()",
           "self.trainable(sit, True).eval()",
           (f"{R}::test_the_latent_batchnorm_moves_once_a_step_in_the_sit_step_and_the_ema_follows",)),
    Mutant("repae-bn-train-in-vae-step", "methods/repae.py", "self.trainable(sit, False).eval()",
           "self.trainable(sit, False).train()",
           (f"{R}::test_the_latent_batchnorm_moves_once_a_step_in_the_sit_step_and_the_ema_follows",)),
    # the EDM adapter (diffusion/denoiser.py)
    Mutant("edm-adapter-scale", "diffusion/denoiser.py", "        x = torch.sqrt(1 + s**2) * x_vp.to(torch.float64)\n",
           "        x = (1 + s**2) * x_vp.to(torch.float64)\n", (N, A)),
    # the engine (training/engine.py, training/ema.py)
    Mutant("engine-ema-before-step", "training/engine.py",
           "                losses = self.method.train_step(self, next(batches))\n",
           "                for key, (src, decay) in self.method.emas.items():\n"
           "                    update_ema(self.emas[key], self.module(src), decay)\n"
           "                losses = self.method.train_step(self, next(batches))\n", (f"{E}::test_the_ema_averages_the_weights_after_each_update",)),
    Mutant("engine-clip-ignored", "training/engine.py",
           "norm = self.accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm is not None else None",
           "norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) "
           "if max_grad_norm is not None else None",
           (f"{E}::test_clipping_scales_the_gradient_to_the_norm_and_returns_the_norm_before",)),
    # the rest of REPA-E's step and losses
    Mutant("repae-sit-on-undetached-latents", "methods/repae.py", "z.detach(), y, zs, t=t, noise=noise)",
           "z, y, zs, t=t, noise=noise)", (R,)),
    Mutant("repae-sit-fresh-time-and-noise", "methods/repae.py", "z.detach(), y, zs, t=t, noise=noise)",
           "z.detach(), y, zs)", (f"{R}::test_the_sit_step_reuses_the_time_and_noise_of_the_vae_steps_alignment",)),
    Mutant("repae-align-coefficient-ignored", "methods/repae.py",
           'losses.pop("loss") + self.vae_align_proj_coeff * align', 'losses.pop("loss") + align', (R,)),
    Mutant("repae-recon-not-detached-for-disc", "loss/autoencoder.py",
           "discriminator(x.float().detach(), recon.float().detach())", "discriminator(x.float().detach(), recon.float())",
           (R,)),
    Mutant("repae-clip-ignored", "methods/repae.py", "step, clip = engine.steps, self.max_grad_norm",
           "step, clip = engine.steps, None", (R,)),
    Mutant("vae-loss-logvar-multiplies", "loss/autoencoder.py", "distance(x, recon) / torch.exp(", "distance(x, recon) * torch.exp(",
           ("tests/test_repae_losses.py",)),
    Mutant("vae-loss-kl-unweighted", "loss/autoencoder.py", 'losses["kl"] = c.kl_weight * kl_loss', 'losses["kl"] = kl_loss',
           ("tests/test_repae_losses.py", R)),
    Mutant("vae-loss-gan-starts-late", "loss/autoencoder.py", "if step >= self.config.discriminator_start",
           "if step > self.config.discriminator_start", ("tests/test_repae_losses.py", R)),
    Mutant("vae-loss-disc-factor-ignored", "loss/autoencoder.py",
           "loss = self.discriminator_factor(step) * hinge_d_loss", "loss = hinge_d_loss", ("tests/test_repae_losses.py",)),
    Mutant("latents-denormalised-by-rsqrt", "diffusion/denoiser.py", "bn.running_var.sqrt().view(shape)",
           "bn.running_var.rsqrt().view(shape)", ("tests/test_denoiser.py",)),
    Mutant("bn-read-through-the-wrapper", "loss/denoising.py", 'bn = getattr(unwrap(model), "bn", None)',
           'bn = getattr(model, "bn", None)', ("tests/test_equivalence.py", "-k", "repae")),
    # the rest of the engine and the denoising method
    Mutant("method-clip-ignored", "methods/denoising.py", 'norm = engine.step("opt", self.max_grad_norm)',
           'norm = engine.step("opt", None)', (f"{S}::test_max_grad_norm_clips_the_update",)),
    Mutant("engine-loss-not-divided-by-accumulation", "training/engine.py",
           "self.accelerator.backward(loss / self.grad_accum)", "self.accelerator.backward(loss)", (E, S)),
    Mutant("engine-update-on-every-micro-batch", "training/engine.py", "        if not self.syncing:\n            return None\n",
           "", (E, S)),
    Mutant("engine-no-zero-grad", "training/engine.py", "        opt.zero_grad(set_to_none=True)\n", "", (E,)),
    Mutant("engine-schedule-ignored", "training/engine.py", 'group["lr"] = self.lr_at(self.steps, base)',
           'group["lr"] = base', (E, "tests/test_dmd2_flags.py", "tests/test_train_dmd2.py")),
    Mutant("engine-non-finite-unchecked", "training/engine.py", "self.ok &= torch.isfinite(loss.detach()).all()",
           "pass", (E,)),
    Mutant("ema-weight-swapped", "training/ema.py", "for e, p in params], 1.0 - decay)", "for e, p in params], decay)", (E,)),
    Mutant("ema-buffers-skipped", "training/ema.py", "            e.lerp_(b.to(e.dtype), 1.0 - decay)\n",
           "            pass\n", (E, R)),
    Mutant("fsdp-no-broadcast", "training/sharding.py", "        dist.broadcast(tensor.detach(), src=0)\n", "        pass\n",
           ("tests/test_equivalence.py", "-k", "fsdp")),
    Mutant("engine-data-position-not-advanced", "training/engine.py", 'self.data["position"] += local_batch', "pass", (E,)),
    Mutant("engine-rng-not-restored", "training/engine.py", "ckpt_io.set_rng_state(rngs[self.accelerator.process_index])",
           "pass", (E,)),
    Mutant("engine-ema-not-restored", "training/engine.py", "                ema.load_state_dict(state[key])\n",
           "                pass\n", (E,)),
    Mutant("engine-optimizer-not-restored", "training/engine.py", "                opt.load_state_dict(state[key])\n",
           "                pass\n", (E,)),
    Mutant("engine-saves-after-a-non-finite-loss", "training/engine.py",
           "        self.check_finite()\n        state = self.state_dict(args)", "        state = self.state_dict(args)", (E,)),
    Mutant("engine-fused-step-not-skipped", "training/engine.py",
           "            inner.found_inf = found_inf  # the fused kernel", "            pass  # the fused kernel", (E,)),
    Mutant("engine-no-hook-at-the-last-step", "training/engine.py",
           "if period and (self.steps % period == 0 or self.steps == total):", "if period and self.steps % period == 0:",
           (E, "tests/test_run_folders.py")),
    # REPA's and REG's objective (loss/denoising.py)
    Mutant("repa-proj-loss-sign", "loss/denoising.py", "total = total + (-cos).mean(dim=1)", "total = total + cos.mean(dim=1)",
           ("tests/test_objectives.py",)),
    Mutant("repa-proj-coeff-ignored", "loss/denoising.py", 'total = total + self.proj_coeff * losses["proj"]',
           'total = total + losses["proj"]', ("tests/test_objectives.py",)),
    Mutant("reg-cls-coeff-ignored", "loss/denoising.py", 'total = total + self.cls_coeff * losses["cls"]',
           'total = total + losses["cls"]', ("tests/test_objectives.py",)),
    Mutant("reg-cls-token-not-scaled", "loss/denoising.py", 'kwargs["cls_token"] = a * cls_token + s * cls_noise',
           'kwargs["cls_token"] = cls_token + s * cls_noise', ("tests/test_objectives.py",)),
    Mutant("reg-cls-target-swapped", "loss/denoising.py", "cls_target = da * cls_token + ds * cls_noise",
           "cls_target = ds * cls_token + da * cls_noise", ("tests/test_objectives.py",)),
    Mutant("repae-latents-not-normalised", "loss/denoising.py", "            x = bn(x)\n", "            pass\n",
           ("tests/test_repae_latent_norm.py",)),
    # the adapters (diffusion/denoiser.py)
    Mutant("edm-adapter-eps-on-the-wrong-scale", "diffusion/denoiser.py", "((x - x0) / s).to(x_vp.dtype)",
           "((x_vp - x0) / s).to(x_vp.dtype)", (f"{N}::test_every_family_read_through_its_adapter_gives_the_same_x0_and_eps",)),
    Mutant("ddpm-adapter-x0-unscaled", "diffusion/denoiser.py",
           "x0 = torch.sqrt(1 + s**2) * x_vp.to(torch.float64) - s * eps.to(torch.float64)",
           "x0 = x_vp.to(torch.float64) - s * eps.to(torch.float64)", (N, A)),
    Mutant("flow-adapter-unscaled", "diffusion/denoiser.py", "x_t = expand_t_like_x(scale, x_vp) * x_vp.to(torch.float64)",
           "x_t = x_vp.to(torch.float64)", (N, A)),
    # DMD2 (methods/dmd2.py, loss/dmd.py, methods/dmd2_teacher.py)
    Mutant("dmd2-generator-clip-none", "methods/dmd2.py", 'engine.step("opt", self.max_grad_norm)',
           'engine.step("opt", None)', (f"{D}::test_max_grad_norm_clips_the_generator_and_the_guidance_updates",)),
    Mutant("dmd2-guidance-clip-none", "methods/dmd2.py", 'engine.step("opt_guidance", self.max_grad_norm)',
           'engine.step("opt_guidance", None)',
           (f"{D}::test_max_grad_norm_clips_the_generator_and_the_guidance_updates",)),
    Mutant("dmd2-recipe-clip-none", "methods/dmd2_cli.py", "max_grad_norm=args.max_grad_norm",
           "max_grad_norm=None", (f"{D}::test_max_grad_norm_clips_the_generator_and_the_guidance_updates",)),
    Mutant("dmd2-recipe-clip-default", "methods/dmd2_cli.py", "max_grad_norm=args.max_grad_norm",
           "max_grad_norm=10.0", (f"{D}::test_max_grad_norm_clips_the_generator_and_the_guidance_updates",)),
    Mutant("dmd2-engine-clip-ignored", "training/engine.py",
           "norm = self.accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm is not None else None",
           "norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) "
           "if max_grad_norm is not None else None",
           (f"{D}::test_max_grad_norm_clips_the_generator_and_the_guidance_updates",)),
    Mutant("dmd2-guidance-not-frozen", "methods/dmd2.py", "            self.set_guidance_trainable(guidance, False)\n",
           "", (f"{D}::test_the_guidance_update_ignores_the_generator_losses",)),
    Mutant("dmd2-freeze-wrong-names", "methods/dmd2.py", "if name in self.trainable:", "if name not in self.trainable:",
           (f"{D}::test_the_guidance_update_ignores_the_generator_losses",)),
    Mutant("dmd2-guidance-not-unfrozen", "methods/dmd2.py", "            self.set_guidance_trainable(guidance, True)\n",
           "", (f"{D}::test_the_generator_updates_every_ratio_steps_and_the_guidance_every_step",)),
    Mutant("dmd2-guidance-turn-not-detached", "methods/dmd2.py", "self.teacher, x.detach(), y, real",
           "self.teacher, x, y, real", (f"{D}::test_the_generator_updates_every_ratio_steps_and_the_guidance_every_step",)),
    Mutant("dmd2-update-ratio-phase", "methods/dmd2.py", "update_generator = engine.steps % self.ratio == 0",
           "update_generator = (engine.steps + 1) % self.ratio == 0",
           (f"{D}::test_the_generator_updates_every_ratio_steps_and_the_guidance_every_step",)),
    Mutant("dmd2-recipe-ratio-ignored", "methods/dmd2_cli.py",
           "dfake_gen_update_ratio=args.dfake_gen_update_ratio", "dfake_gen_update_ratio=1",
           (f"{D}::test_the_generator_updates_every_ratio_steps_and_the_guidance_every_step",)),
    Mutant("dmd2-dm-real-fake-swapped", "methods/dmd2.py", "distribution_matching_loss(x, x0_real, x0_fake)",
           "distribution_matching_loss(x, x0_fake, x0_real)",
           (f"{D}::test_the_dm_gradient_moves_the_generated_x_toward_the_teachers_x0",)),
    Mutant("dmd2-dm-loss-detached", "methods/dmd2.py", "distribution_matching_loss(x, x0_real, x0_fake)",
           "distribution_matching_loss(x.detach(), x0_real, x0_fake)",
           (f"{D}::test_the_dm_gradient_moves_the_generated_x_toward_the_teachers_x0",)),
    Mutant("dmd2-dm-descent-sign", "loss/dmd.py", "(x - grad).detach()", "(x + grad).detach()",
           ("tests/test_dmd.py::test_dm_gradient_is_the_normalised_score_difference",
            f"{D}::test_the_dm_gradient_moves_the_generated_x_toward_the_teachers_x0")),
    Mutant("dmd2-dm-normaliser-fake", "loss/dmd.py", "weight = p_real.abs()", "weight = p_fake.abs()",
           ("tests/test_dmd.py::test_dm_gradient_is_the_normalised_score_difference",)),
    Mutant("dmd2-real-guidance-dropped", "methods/dmd2.py", "x_t, sigma, y, self.cfg_scale)", "x_t, sigma, y)",
           (f"{D}::test_real_guidance_scale_guides_the_teacher_in_the_dm_loss",)),
    Mutant("dmd2-recipe-real-guidance-ignored", "methods/dmd2_cli.py",
           "real_guidance_scale=args.real_guidance_scale,", "real_guidance_scale=1.0,",
           (f"{D}::test_real_guidance_scale_guides_the_teacher_in_the_dm_loss",)),
    Mutant("dmd2-cfg-around-cond", "methods/dmd2_teacher.py", "return uncond + cfg_scale * (cond - uncond)",
           "return cond + cfg_scale * (cond - uncond)",
           ("-k", "posterior_mean_with_guidance", "tests/test_dmd.py")),
    Mutant("dmd2-dm-weight-dropped", "methods/dmd2.py", 'total = self.dm_weight * losses["loss_dm"]',
           'total = losses["loss_dm"]', (f"{D}::test_dm_loss_weight_scales_the_dm_gradient",)),
    Mutant("dmd2-gen-cls-weight-dropped", "methods/dmd2.py", 'total + self.gen_cls_weight * losses["gen_cls_loss"]',
           'total + losses["gen_cls_loss"]', ("tests/test_dmd2_flags.py::test_loss_weights_and_gan_alone",)),
    Mutant("dmd2-recipe-dm-weight-ignored", "methods/dmd2_cli.py", "dm_loss_weight=args.dm_loss_weight",
           "dm_loss_weight=1.0", (f"{D}::test_dm_loss_weight_scales_the_dm_gradient",)),
    Mutant("dmd2-dm-levels-whole-grid", "methods/dmd2.py", "torch.randint(self.min_step, min(self.max_step + 1, GRID),",
           "torch.randint(0, GRID,", ("tests/test_train_dmd2.py::test_dm_levels_span_the_step_percent_range",)),
    Mutant("dmd2-gen-gan-sign", "methods/dmd2.py", "gan_generator_loss(logits)", "gan_generator_loss(-logits)",
           (f"{D}::test_the_generator_gan_loss_raises_the_heads_realism_of_generated_images",)),
    Mutant("dmd2-gen-gan-loss-sign", "loss/dmd.py", "F.softplus(-logits_fake.float()).mean()\n",
           "F.softplus(logits_fake.float()).mean()\n", ("tests/test_dmd.py::test_gan_losses_closed_forms",
                                                       f"{D}::test_the_generator_gan_loss_raises_the_heads_realism_of_generated_images")),
    Mutant("dmd2-disc-real-fake-swapped", "methods/dmd2.py", "logits_real, logits_fake = both[: len(real)]",
           "logits_fake, logits_real = both[: len(real)]",
           (f"{D}::test_the_guidance_turn_teaches_the_head_to_tell_real_from_generated",)),
    Mutant("dmd2-cls-weight-dropped", "methods/dmd2.py", '+ cls_weight * losses["guidance_cls_loss"]',
           '+ losses["guidance_cls_loss"]', (f"{D}::test_the_guidance_turn_teaches_the_head_to_tell_real_from_generated",)),
    Mutant("dmd2-recipe-cls-weights-swapped", "methods/dmd2_cli.py",
           "args.guidance_cls_loss_weight if args.cls_on_clean_image else args.cls_loss_weight",
           "args.cls_loss_weight if args.cls_on_clean_image else args.guidance_cls_loss_weight",
           (f"{D}::test_the_guidance_turn_teaches_the_head_to_tell_real_from_generated",)),
    Mutant("dmd2-fake-score-on-real", "methods/dmd2.py", "teacher.fake_score_loss(self.fake_unet, fake, y_fake)",
           "teacher.fake_score_loss(self.fake_unet, real, y_real)",
           (f"{D}::test_the_fake_score_learns_the_generators_samples",)),
    Mutant("dmd2-pure-noise-not-vp", "methods/dmd2.py", "return noised(torch.zeros_like(eps), sigma, eps)",
           "return eps", (f"{D}::test_the_generator_starts_from_pure_noise_at_its_conditioning_level",)),
    Mutant("dmd2-top-level-mask", "methods/dmd2.py", "top = k == 0", "top = k == len(self.levels) - 1",
           (f"{D}::test_the_few_step_generator_denoises_real_images_at_its_levels_and_pure_noise_at_the_top",)),
    Mutant("dmd2-denoising-never-top", "methods/dmd2.py", "clean, k = real, torch.randint(0, len(self.levels)",
           "clean, k = real, torch.randint(1, len(self.levels)",
           (f"{D}::test_the_few_step_generator_denoises_real_images_at_its_levels_and_pure_noise_at_the_top",)),
    Mutant("dmd2-backward-simulation-noised-twice", "methods/dmd2.py", "return (x0 if k else x), torch.full",
           "return x, torch.full", (f"{D}::test_backward_simulation_trains_on_the_generators_own_x0_noised_once",)),
    Mutant("dmd2-diffusion-gan-not-noised", "methods/dmd2.py", "x_vp = x if eps is None else noised(x, sigma, eps)",
           "x_vp = x", (f"{D}::test_the_diffusion_gan_noises_the_heads_inputs_below_its_max_timestep",)),
    Mutant("dmd2-diffusion-gan-whole-grid", "methods/dmd2.py", "torch.randint(0, max(1, self.gan_max), (n,)",
           "torch.randint(0, GRID, (n,)", (f"{D}::test_the_diffusion_gan_noises_the_heads_inputs_below_its_max_timestep",)),
    Mutant("dmd2-edm-bottleneck-scale", "methods/dmd2_teacher.py", "x = (torch.sqrt(1 + s**2) * x_vp",
           "x = ((1 + s**2) * x_vp", (f"{D}::test_the_edm_bottleneck_reads_the_network_at_x0_plus_sigma_eps",)),
    Mutant("dmd2-edm-bottleneck-unscaled", "methods/dmd2_teacher.py", "x = (torch.sqrt(1 + s**2) * x_vp",
           "x = (1 * x_vp", (f"{D}::test_the_edm_bottleneck_reads_the_network_at_x0_plus_sigma_eps",)),
    Mutant("dmd2-edm-fake-noise-power", "methods/dmd2_teacher.py", "x = x0 + expand_t_like_x(sigma, x0)",
           "x = x0 + expand_t_like_x(sigma**2, x0)",
           (f"{D}::test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid",)),
    Mutant("dmd2-edm-fake-clean-input", "methods/dmd2_teacher.py", "net(x, sigma.to(x0.dtype), y)",
           "net(x0, sigma.to(x0.dtype), y)",
           (f"{D}::test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid",)),
    Mutant("dmd2-edm-fake-sigma-data-dropped", "methods/dmd2_teacher.py", "x0, sigma, self.sigma_data)", "x0, sigma)",
           (f"{D}::test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid",)),
    Mutant("dmd2-edm-fake-weight-power", "loss/dmd.py", "sigma.to(torch.float32) ** -2", "sigma.to(torch.float32) ** -1",
           ("tests/test_dmd.py::test_fake_score_loss_is_edm_weighted",
            f"{D}::test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid")),
    Mutant("dmd2-eps-fake-x0-target", "methods/dmd2_teacher.py", "torch.mean((pred.eps.float() - eps.float()) ** 2)",
           "torch.mean((pred.x0.float() - eps.float()) ** 2)",
           (f"{D}::test_the_eps_fake_score_loss_of_a_diffusers_teacher_is_the_eps_mse",)),
    Mutant("dmd2-eps-fake-fresh-noise", "methods/dmd2_teacher.py", "noised(x0, self.sigma(index), eps)",
           "noised(x0, self.sigma(index), torch.randn_like(eps))",
           (f"{D}::test_the_eps_fake_score_loss_of_a_diffusers_teacher_is_the_eps_mse",)),
    Mutant("dmd2-edm-fake-half-grid", "methods/dmd2_teacher.py", "self.sigma(torch.randint(0, GRID, (x0.shape[0],)",
           "self.sigma(torch.randint(0, GRID // 2, (x0.shape[0],)",
           (f"{D}::test_the_edm_fake_score_loss_is_the_lambda_weighted_x0_error_on_the_karras_grid",)),
    Mutant("dmd2-denoising-drawn-labels", "methods/dmd2.py",
           "y = self.draw_labels(n, device) if not self.denoising or self.backward_simulation else y_real",
           "y = self.draw_labels(n, device)",
           (f"{D}::test_the_few_step_generator_denoises_each_real_image_under_its_own_label",)),
    Mutant("dmd2-recipe-diffusion-gan-ignored", "methods/dmd2_cli.py", "diffusion_gan=args.diffusion_gan,",
           "diffusion_gan=False,", (f"{D}::test_the_diffusion_gan_noises_the_heads_inputs_below_its_max_timestep",)),
    Mutant("dmd2-recipe-diffusion-gan-max-ignored", "methods/dmd2_cli.py",
           "diffusion_gan_max_timestep=args.diffusion_gan_max_timestep", "diffusion_gan_max_timestep=1000",
           (f"{D}::test_the_diffusion_gan_noises_the_heads_inputs_below_its_max_timestep",)),
]


def tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(mutant: Mutant, copy: Path) -> str | None:
    """The first test that fails with the mistake applied (None: it survives)."""
    target = copy / mutant.path
    original = target.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the text to change occurs {original.count(mutant.old)} times in {mutant.path}")
    target.write_text(original.replace(mutant.old, mutant.new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=copy, capture_output=True, text=True)
    finally:
        target.write_text(original)
    if done.returncode not in (0, 1):  # not a test failure: a missing test, a collection error
        raise SystemExit(f"{mutant.name}: pytest exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if done.returncode == 0:
        return None
    failed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return failed[0] if failed else "?"


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant(s) {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        tracked_copy(copy)
        survivors = []
        for mutant in chosen:
            caught = run(mutant, copy)
            print(f"caught   {mutant.name}  by {caught}" if caught else f"SURVIVED {mutant.name}", flush=True)
            if not caught:
                survivors.append(mutant.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
