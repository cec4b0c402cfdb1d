"""REPA-E (Leng et al. 2025, "REPA-E: Unlocking VAE for End-to-End Tuning of Latent Diffusion
Transformers"): the VAE, a PatchGAN discriminator and the SiT trained together, as a method on the engine.

One step, in ``train_repae.py``'s order (End2End-Diffusion/REPA-E), from one VAE forward taken first:

1. VAE update, SiT frozen and in eval mode (its latent BatchNorm uses, and keeps, its running
   statistics), discriminator frozen: reconstruction + LPIPS + KL + GAN losses
   (``loss.autoencoder``) + ``vae_align_proj_coeff`` x REPA's alignment through the SiT's first
   ``encoder_depth`` blocks on the latents themselves, not detached: the only path from the diffusion
   model to the VAE.
2. Discriminator update: hinge loss on the images and the (detached) reconstruction.
3. SiT update on the detached latents, with the time and noise of step 1: denoising + ``proj_coeff``
   x REPA, its BatchNorm normalising with batch statistics and updating the running ones.

The EMA averages the SiT's weights and BatchNorm statistics. Checkpoint keys are REPA-E's: ``model``,
``ema``, ``vae`` (under LDM names, as REPA-E's), ``discriminator``, ``opt``, ``opt_vae``, ``opt_disc``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from methods.alignment import encoder_targets
from training.engine import Method, Trainable, adamw


class REPAEMethod(Method):
    """The three networks, their AdamW optimizers (own learning rates) and the SiT's EMA; ``batches``
    turns a loader batch into ``(raw images in [0, 255], images in [-1, 1], labels)``."""

    def __init__(self, sit, vae, discriminator, objective, vae_loss, encoders, batches, *, lr: float,
                 vae_lr: float, disc_lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8,
                 ema_decay: float = 0.9999, max_grad_norm: float | None = 1.0, vae_align_proj_coeff: float = 1.5,
                 model_kwargs: dict | None = None, sampling: dict | None = None):
        device = batches.device
        self.modules = {"model": sit.to(device), "vae": vae.to(device), "discriminator": discriminator.to(device)}
        self.optimizers = {key: adamw(self.modules[module].parameters(), rate, betas, weight_decay, eps)
                           for key, module, rate in (("opt", "model", lr), ("opt_vae", "vae", vae_lr),
                                                     ("opt_disc", "discriminator", disc_lr))}
        self.emas = {"ema": ("model", ema_decay)}
        self.objective, self.vae_loss, self.encoders, self.batches = objective, vae_loss, list(encoders), batches
        self.max_grad_norm, self.vae_align_proj_coeff = max_grad_norm, vae_align_proj_coeff
        self.model_kwargs, self.sampling = model_kwargs or {}, sampling or {}
        self.num_classes = self.model_kwargs.get("num_classes", 0)
        # switching a network keeps what is frozen by design frozen (the SiT's sin-cos position table, which
        # REPA-E's requires_grad(model, True) unfreezes)
        self.switch = {"model": Trainable(sit), "discriminator": Trainable(discriminator)}

    @property
    def codec(self):
        """The VAE being trained decodes the samples, with its current weights."""
        from diffusion.network import unwrap
        from models.vae import VAECodec

        return VAECodec(unwrap(self.modules["vae"]))

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        raw, x, y = self.batches(batch)
        zs = encoder_targets(self.encoders, raw, reg=False)[0] if self.encoders else []
        sit, disc = engine.module("model"), engine.module("discriminator")
        step, clip = engine.steps, self.max_grad_norm

        # 1. the VAE, through its losses and the frozen SiT's alignment
        self.switch["model"].set(sit, False).eval()
        self.switch["discriminator"].set(disc, False)
        with engine.autocast():
            posterior, z, recon = self.modules["vae"](x)
            losses = self.vae_loss.generator(x, recon, posterior, disc, step)
            t, noise = self.objective.draw(z)
            align = self.objective(sit, z, y, zs, t=t, noise=noise, align_only=True)["proj"]
        vae_loss = losses.pop("loss") + self.vae_align_proj_coeff * align
        engine.backward(vae_loss)
        grad_norm_vae = engine.step("opt_vae", clip)

        # 2. the discriminator
        self.switch["discriminator"].set(disc, True)
        with engine.autocast():
            d = self.vae_loss.discriminator(x, recon, self.modules["discriminator"], step)
        engine.backward(d["loss"])
        engine.step("opt_disc", clip)

        # 3. the SiT, on the detached latents with step 1's time and noise
        self.switch["model"].set(sit, True).train()
        with engine.autocast():
            out = self.objective(self.modules["model"], z.detach(), y, zs, t=t, noise=noise)
        engine.backward(out["loss"])
        grad_norm = engine.step("opt", clip)

        record = {**out, **{f"vae_{k}": v for k, v in losses.items()}, "vae_align": align, "vae_loss": vae_loss,
                  "d_loss": d["d_loss"], "logits_real": d["logits_real"], "logits_fake": d["logits_fake"]}
        if grad_norm is not None:
            record.update(grad_norm=grad_norm, grad_norm_vae=grad_norm_vae)
        return record

    def extra_state(self) -> dict:
        return {"model_kwargs": self.model_kwargs}

    def export_weights(self, key: str, weights: dict) -> dict:
        """The VAE is saved under LDM names, as REPA-E's checkpoints and released VAEs hold it."""
        from models.vae import to_ldm_state_dict

        return to_ldm_state_dict(weights) if key == "vae" else weights

    def import_weights(self, key: str, weights: dict) -> dict:
        from models.vae import from_ldm_state_dict

        return from_ldm_state_dict(weights) if key == "vae" and any(k.startswith("encoder.down.") for k in weights) \
            else weights


def latents_stats_path(vae_ckpt: str | Path) -> Path:
    """REPA-E's ``<vae-ckpt>-latents-stats.pt`` beside a VAE checkpoint."""
    vae_ckpt = Path(vae_ckpt)
    return vae_ckpt.with_name(vae_ckpt.name.replace(".pt", "-latents-stats.pt"))


def load_latents_stats(vae_ckpt: str | Path) -> dict[str, torch.Tensor]:
    """``latents_scale`` and ``latents_bias`` of the VAE's latents, the SiT's BatchNorm starting point."""
    path = latents_stats_path(vae_ckpt)
    if not path.is_file():
        raise ValueError(f"{path}: missing; the SiT's latent BatchNorm starts from the statistics REPA-E keeps beside "
                         "the VAE checkpoint (save_vae_weights.py writes them)")
    stats = torch.load(path, map_location="cpu", weights_only=True)
    if not {"latents_scale", "latents_bias"} <= set(stats):
        raise ValueError(f"{path} holds {sorted(stats)}, not latents_scale and latents_bias")
    return stats
