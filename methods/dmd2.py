"""DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis") as a
method on the engine: a one- or few-step generator distilled from any teacher (``methods/dmd2_teacher.py``).

One step, in DMD2's order (``main/edm/train_edm.py`` / ``main/train_sd.py`` ``train_one_step``):

1. The generator turn. The generator, initialised from the teacher, maps pure noise at its conditioning
   level to x0 (with ``--denoising``: a noised sample at one of ``denoising_step_list``'s levels, from
   real data or, with ``--backward_simulation``, from the generator's own few-step samples). When
   ``step % dfake_gen_update_ratio == 0`` (step 0 included) the generator is updated with the
   distribution-matching loss (t in [min_step_percent, max_step_percent] of the teacher's 1000 levels,
   the teacher guided by ``real_guidance_scale``) plus ``gen_cls_loss_weight`` x the GAN generator loss (with
   ``--gen_cls_loss``, or ``--gan_classifier`` as train_edm.py);
   the guidance model is frozen meanwhile. ``dm_loss_weight`` weighs the DM loss; ``gan_alone`` drops it.
2. The guidance turn, every step, on the same generated batch (detached): the fake score's own
   denoising loss plus the weighted GAN classifier loss on real and generated images
   (``diffusion_gan``: both noised at a level below ``diffusion_gan_max_timestep``).

Checkpoint keys: ``model`` (the generator: what ``sample.py`` and ``sample_ddp.py`` load), ``guidance``
(DMD2's ``fake_unet.*`` and ``cls_pred_branch.*``), ``opt`` and ``opt_guidance``; the generator's noise
levels are saved as ``generator_sigmas``.
"""

from __future__ import annotations

import torch
from torch import nn

from loss.dmd import (
    distribution_matching_loss,
    gan_discriminator_loss,
    gan_generator_loss,
)
from methods.dmd2_teacher import GRID, Teacher, noised
from models.stable_diffusion import DiffusersEps
from training.engine import Method, Trainable, adamw
from training.schedule import constant_with_warmup


class Guidance(nn.Module):
    """DMD2's guidance model: the fake score ``fake_unet`` and the GAN head ``cls_pred_branch`` (or None).
    ``forward`` is the guidance turn, one call (one DDP forward) per step; ``forward(mode="x0")`` and
    ``forward(mode="logits")`` are what the generator turn reads of it (every use goes through ``forward``,
    so FSDP gathers the weights for it)."""

    def __init__(self, fake_unet: nn.Module, cls_pred_branch: nn.Module | None = None):
        super().__init__()
        self.fake_unet, self.cls_pred_branch = fake_unet, cls_pred_branch

    @property
    def fsdp_units(self) -> list[nn.Module]:
        """FSDP units inside the guidance model (``--fsdp``): the fake score (with its blocks) and the head."""
        return [m for m in (self.fake_unet, self.cls_pred_branch) if m is not None]

    def logits(self, teacher: Teacher, x: torch.Tensor, y, index: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """Realism logits of clean ``x`` (index 0, no noise) or of ``x`` noised at grid ``index``."""
        sigma = teacher.sigma(index)
        x_vp = x if eps is None else noised(x, sigma, eps)
        features = teacher.bottleneck(self.fake_unet, x_vp, sigma, y).float()
        return self.cls_pred_branch(features).flatten(1)

    def forward(self, teacher: Teacher, fake: torch.Tensor, y_fake, real=None, y_real=None, gan=None,
                cls_weight: float = 0.0, mode: str = "guidance", sigma=None, index=None, eps=None):
        if mode == "x0":  # the fake score's x0 of noised ``fake`` at ``sigma``
            return teacher.x0(self.fake_unet, fake, sigma, y_fake)
        if mode == "logits":
            return self.logits(teacher, fake, y_fake, index, eps)
        losses = {"loss_fake_mean": teacher.fake_score_loss(self.fake_unet, fake, y_fake)}
        losses["guidance_loss"] = losses["loss_fake_mean"]
        if self.cls_pred_branch is not None:
            index, eps = gan(2 * len(fake), fake)
            both = self.logits(teacher, torch.cat([real, fake]), torch.cat([y_real, y_fake]), index, eps)
            logits_real, logits_fake = both[: len(real)], both[len(real):]
            losses["guidance_cls_loss"] = gan_discriminator_loss(logits_real, logits_fake)
            losses["pred_realism_on_real"] = torch.sigmoid(logits_real).mean().detach()
            losses["pred_realism_on_fake"] = torch.sigmoid(logits_fake).mean().detach()
            losses["guidance_loss"] = losses["guidance_loss"] + cls_weight * losses["guidance_cls_loss"]
        return losses


class DMD2Method(Method):
    """The generator and the guidance model with their AdamW optimizers (DMD2's: betas (0.9, 0.999),
    weight decay 0.01), on ``teacher``. ``data(batch) -> (real x, real labels)``; ``draw_labels(n,
    device)`` the generator's conditions (uniform classes, as DMD2)."""

    def __init__(self, teacher: Teacher, generator: nn.Module, guidance: Guidance, data, draw_labels, *,
                 shape: tuple[int, ...], batch_size: int, generator_lr: float, guidance_lr: float, device,
                 generator_sigmas: list[float], dfake_gen_update_ratio: int = 1, real_guidance_scale: float = 1.0,
                 min_step_percent: float = 0.02,
                 max_step_percent: float = 0.98, gen_cls_loss_weight: float = 0.0, cls_loss_weight: float = 0.0,
                 dm_loss_weight: float = 1.0, gan_alone: bool = False,
                 gen_cls_loss: bool = False, diffusion_gan: bool = False, diffusion_gan_max_timestep: int = 0,
                 denoising: bool = False, backward_simulation: bool = False, max_grad_norm: float | None = 10.0,
                 model_kwargs: dict | None = None, sampling: dict | None = None, codec=None, num_classes: int = 0,
                 sampling_record: dict | None = None, warmup_step: int = 0, processes: int = 1, warmup_from: int = 0,
                 notes: tuple[str, ...] = ()):
        """``shape``: one sample's (C, H, W); ``batch_size``: the generator's batch when there are no real
        images (``data`` returns ``(None, None)``); ``generator_sigmas``: the noise levels it generates from
        (one: its conditioning level; with ``denoising``, its steps, the first at the top); ``sampling``: the
        ``generate`` arguments that read the teacher's family (noise schedule, path type) for the grids;
        ``sampling_record``: what a checkpoint records for sampling the generator (its model, resolution, classes,
        VAE, noise schedule or path); the learning rates warm up over ``warmup_step`` from step ``warmup_from``
        (``training.schedule.constant_with_warmup`` on ``processes``)."""
        self.teacher, self.data, self.draw_labels, self.shape = teacher, data, draw_labels, tuple(shape)
        self.unit_noise = teacher.unit_noise
        # an SD generator's few-step inputs are conditioned on the real data's prompts (DMD2's denoising loader)
        self.real_prompts = teacher.prompts is not None
        self.batch_size, self.device = batch_size, device
        self.modules = {"model": generator.to(device), "guidance": guidance.to(device)}
        self.modules_generator = generator  # the unwrapped generator, whatever the engine wraps it in
        teacher.model.to(device).requires_grad_(False).eval()
        self.optimizers = {"opt": adamw([p for p in generator.parameters() if p.requires_grad], generator_lr,
                                        weight_decay=0.01),
                           "opt_guidance": adamw([p for p in guidance.parameters() if p.requires_grad], guidance_lr,
                                                 weight_decay=0.01)}
        self.emas = {}
        self.sampled = "model"  # no EMA: samples come from the generator itself (gathered with --fsdp)
        self.codec, self.num_classes, self.sampling_record = codec, num_classes, dict(sampling_record or {})
        self.warmup_step, self.processes, self.warmup_from, self.notes = warmup_step, processes, warmup_from, notes
        self.ratio, self.cfg_scale, self.max_grad_norm = dfake_gen_update_ratio, real_guidance_scale, max_grad_norm
        self.min_step, self.max_step = int(min_step_percent * GRID), int(max_step_percent * GRID)
        self.gen_cls_weight, self.cls_weight = gen_cls_loss_weight, cls_loss_weight
        self.dm_weight, self.gan_alone = dm_loss_weight, gan_alone
        self.gen_gan = guidance.cls_pred_branch is not None and gen_cls_loss  # train_sd.py's --gen_cls_loss gate
        self.diffusion_gan, self.gan_max = diffusion_gan, diffusion_gan_max_timestep
        self.denoising, self.backward_simulation = denoising, backward_simulation
        self.generator_sigmas = [float(s) for s in generator_sigmas]
        self.levels = torch.tensor(self.generator_sigmas, dtype=torch.float64)
        generator.generator_sigmas = self.generator_sigmas  # how it samples (diffusion.pipeline.few_step_sample)
        self.guidance_trainable = Trainable(guidance)
        self.model_kwargs = {"in_channels": shape[0], "input_size": shape[-1], **(model_kwargs or {})}
        self.sampling = sampling or {}  # the teacher's noise schedule / path, which the generator is read on

    # ----- pieces -----
    def generate(self, generator: nn.Module, x_vp: torch.Tensor, sigma: torch.Tensor, y) -> torch.Tensor:
        """The generator's x0 (float64 inside, returned in float32) at ``(x_vp, sigma)``."""
        return self.teacher.adapter(generator)(x_vp, sigma, y, x0_dtype=torch.float64).x0.float()

    def pure_noise(self, n: int, device, sigma: torch.Tensor) -> torch.Tensor:
        """Noise at level ``sigma`` with nothing of the data in it: ``noised(0, sigma, eps)``; for a generator that
        starts from unit noise (DMD2's SD generators) ``eps`` itself."""
        eps = torch.randn(n, *self.shape, device=device)
        return eps if self.unit_noise else noised(torch.zeros_like(eps), sigma, eps)

    def gan_noise(self, n: int, like: torch.Tensor):
        """Grid indices and noise for the classifier's inputs: ``diffusion_gan`` draws indices in
        [0, diffusion_gan_max_timestep) and noises, else index 0 and the clean input."""
        if not self.diffusion_gan:
            return torch.zeros(n, dtype=torch.long, device=like.device), None
        index = torch.randint(0, max(1, self.gan_max), (n,), device=like.device)
        return index, torch.randn(n, *like.shape[1:], device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def backward_simulate(self, generator, n: int, y, device) -> tuple[torch.Tensor, torch.Tensor]:
        """DMD2's ``sample_backward``: a step k in [0, num_denoising_step) for the whole batch; the generator
        runs its first k steps from fresh noise (x0, then noised to the next level); returns that x0 and
        the level index k it stops at (for k = 0: the noise, to be replaced by pure noise)."""
        k = int(torch.randint(0, len(self.levels), (1,)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = torch.tensor([k], device=device)
            torch.distributed.broadcast(shared, 0)
            k = int(shared)
        sigmas = self.levels.to(device)
        x = self.pure_noise(n, device, sigmas[0].expand(n))
        for i in range(k):
            x0 = self.generate(generator, x, sigmas[i].expand(n), y)
            x = noised(x0, sigmas[i + 1].expand(n), torch.randn_like(x0))
        return (x0 if k else x), torch.full((n,), k, device=device)

    def generator_input(self, generator, n: int, y, real: torch.Tensor | None, device):
        """``(x_vp, sigma)`` the generator starts from: pure noise at the conditioning level, or with
        ``--denoising`` a clean sample noised at one of the step list's levels (pure noise at the top)."""
        if not self.denoising:
            sigma = torch.full((n,), self.generator_sigmas[0], dtype=torch.float64, device=device)
            return self.pure_noise(n, device, sigma), sigma
        if self.backward_simulation:
            clean, k = self.backward_simulate(generator, n, y, device)
        else:
            clean, k = real, torch.randint(0, len(self.levels), (n,), device=device)
        sigma = self.levels.to(device)[k]
        eps = torch.randn(n, *self.shape, device=device)
        x = noised(clean, sigma, eps)
        top = k == 0  # DMD2's pure-noise mask at the first (top) level
        pure = eps if self.unit_noise else noised(torch.zeros_like(eps), sigma, eps)
        return torch.where(top.view(-1, *[1] * len(self.shape)), pure, x), sigma

    # ----- what the run reads -----
    def lr_at(self, step: int, base: float, total: int) -> float:
        """DMD2's warm-up, restarted at a ``--ckpt_only_path`` start."""
        return constant_with_warmup(step - self.warmup_from, base, self.warmup_step, self.processes)

    def describe(self) -> list[str]:
        levels = [round(s, 4) for s in self.generator_sigmas]
        return [*super().describe(), f"generator noise levels {levels}", *self.notes]

    def grid_conditions(self, samples: int | None, nrow: int | None) -> tuple[torch.Tensor, int]:
        """A text-to-image generator's grid shows its first training prompts (``samples`` of them)."""
        prompts = self.teacher.prompts
        if prompts is not None:
            return prompts.first(samples).cpu(), nrow
        return super().grid_conditions(samples, nrow)

    # ----- the step -----
    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        real, y_real = self.data(batch)
        n, device = self.batch_size, self.device
        real_conditions = self.denoising and (self.real_prompts or not self.backward_simulation)
        y = y_real if real_conditions else self.draw_labels(n, device)
        update_generator = engine.steps % self.ratio == 0
        generator, guidance = engine.module("model"), engine.module("guidance")
        record = {}
        x_vp, sigma = self.generator_input(generator, n, y, real, device)

        # 1. the generator turn
        if update_generator:
            self.guidance_trainable.set(guidance, False)
            with engine.autocast():
                x = self.generate(self.modules["model"], x_vp, sigma, y)
                loss, record = self.generator_losses(guidance, x, y)
            engine.backward(loss)
            norm = engine.step("opt", self.max_grad_norm)
            self.guidance_trainable.set(guidance, True)
            if norm is not None:
                record["generator_grad_norm"] = norm
        else:
            with torch.no_grad(), engine.autocast():
                x = self.generate(generator, x_vp, sigma, y)

        # 2. the guidance turn, on the same generated batch
        with engine.autocast():
            losses = self.modules["guidance"](self.teacher, x.detach(), y, real, y_real, self.gan_noise,
                                              self.cls_weight)
        engine.backward(losses["guidance_loss"])
        norm = engine.step("opt_guidance", self.max_grad_norm)
        if norm is not None:
            losses["guidance_grad_norm"] = norm
        return {**record, **losses, "loss": losses["guidance_loss"]}

    def generator_losses(self, guidance: Guidance, x: torch.Tensor, y) -> tuple[torch.Tensor, dict]:
        """DMD2's ``generator_forward``: ``dm_loss_weight`` x the DM loss (none with ``gan_alone``, and the
        teacher does not run) plus ``gen_cls_loss_weight`` x the GAN generator loss of generated ``x``."""
        n, losses, total = x.shape[0], {}, x.new_zeros(())
        if not self.gan_alone:
            with torch.no_grad():
                index = torch.randint(self.min_step, min(self.max_step + 1, GRID), (n,), device=x.device)
                sigma = self.teacher.sigma(index)
                x_t = noised(x.detach(), sigma, torch.randn_like(x))
                x0_real = self.teacher.x0(self.teacher.model, x_t, sigma, y, self.cfg_scale)
                x0_fake = guidance(self.teacher, x_t, y, mode="x0", sigma=sigma)
            losses["loss_dm"] = distribution_matching_loss(x, x0_real, x0_fake)
            total = self.dm_weight * losses["loss_dm"]
        if self.gen_gan:
            index, eps = self.gan_noise(n, x)
            logits = guidance(self.teacher, x, y, mode="logits", index=index, eps=eps)
            losses["gen_cls_loss"] = gan_generator_loss(logits)
            total = total + self.gen_cls_weight * losses["gen_cls_loss"]
        losses["generator_loss"] = total
        return total, losses

    def extra_state(self) -> dict:
        return {"model_kwargs": self.model_kwargs, "generator_sigmas": self.generator_sigmas,
                "warmup_from": self.warmup_from}

    def load_extra_state(self, state: dict) -> None:
        """The warm-up's start (checkpoints before the sampling record kept it in their ``args``)."""
        self.warmup_from = state.get("warmup_from", (state.get("args") or {}).get("warmup_from", 0))

    def export_weights(self, key: str, weights: dict) -> dict:
        """A diffusers generator is saved as DMD2 saves it: the UNet's own state dict (no ``unet.`` prefix)."""
        if key == "model" and isinstance(self.modules_generator, DiffusersEps):
            return {k.removeprefix("unet."): v for k, v in weights.items()}
        return weights

    def import_weights(self, key: str, weights: dict) -> dict:
        if key == "model" and isinstance(self.modules_generator, DiffusersEps):
            return {f"unet.{k}": v for k, v in weights.items()}
        return weights
