"""The VAE's losses in REPA-E (its ``loss/losses.py``, after taming-transformers' ``vqperceptual.py``).

Generator (the VAE's update), with ``r`` the reconstruction of images ``x`` in [-1, 1]:

    L_G = w_rec * L1(x, r) / exp(logvar) + w_p * LPIPS(x, r) + w_kl * KL(q(z|x) || N(0, I))
          + f * w_d * (-mean D(r))                                        (f = discriminator_factor, once
                                                                            the step reaches discriminator_start)
Discriminator:  L_D = f * hinge(D(x), D(sg(r)))

KL is summed over C, H, W and averaged over the batch; the GAN weight ``w_d`` is fixed (REPA-E has no
adaptive weight). The loss configuration is the original's YAML (``configs/l1_lpips_kl_gan.yaml``):
``load_loss_config`` reads its keys, including those REPA-E accepts and ignores; unknown keys and
settings this code does not implement are refused in one line. All losses run in float32 with
autocast off, as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

# keys of the original's ``losses:`` section that REPA-E's VAE mode reads but does not use
IGNORED_KEYS = {"quantizer_weight", "proj_coef", "lecam_ema_decay"}


@dataclass(frozen=True)
class LossConfig:
    """The ``losses:`` section of REPA-E's loss YAML, with the original's names and defaults."""

    discriminator_start: int = 0
    discriminator_factor: float = 1.0
    discriminator_weight: float = 0.1
    perceptual_loss: str = "lpips"
    perceptual_weight: float = 1.0
    reconstruction_loss: str = "l1"
    reconstruction_weight: float = 1.0
    lecam_regularization_weight: float = 0.0
    kl_weight: float = 1e-6
    logvar_init: float = 0.0


def load_loss_config(path: str | Path) -> LossConfig:
    """``--loss-cfg-path``: REPA-E's YAML (``model.vq_model.quantize_mode`` and ``losses``), checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--loss-cfg-path {path}: no such file (REPA-E's configs/l1_lpips_kl_gan.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"model", "losses"}
    mode = ((raw.get("model") or {}).get("vq_model") or {}).get("quantize_mode", "vae")
    losses = dict(raw.get("losses") or {})
    known = {f.name for f in fields(LossConfig)}
    unknown |= {f"losses.{k}" for k in set(losses) - known - IGNORED_KEYS}
    if unknown:
        raise ValueError(f"--loss-cfg-path {path}: unknown key(s) {', '.join(sorted(unknown))}; REPA-E's keys are "
                         f"{', '.join(sorted(known | IGNORED_KEYS))}")
    if mode != "vae":
        raise ValueError(f"--loss-cfg-path {path}: quantize_mode {mode!r}; REPA-E trains a KL VAE (quantize_mode: vae)")
    types = {f.name: type(f.default) for f in fields(LossConfig)}  # YAML 1.1 reads 1e-6 as a string
    try:
        config = LossConfig(**{k: types[k](v) for k, v in losses.items() if k in known})
    except ValueError as e:
        raise ValueError(f"--loss-cfg-path {path}: {e}") from None
    if config.perceptual_loss != "lpips":
        raise ValueError(f"--loss-cfg-path {path}: perceptual_loss {config.perceptual_loss!r}; only lpips is available")
    if config.reconstruction_loss not in ("l1", "l2"):
        raise ValueError(f"--loss-cfg-path {path}: reconstruction_loss {config.reconstruction_loss!r}; use l1 or l2")
    if config.lecam_regularization_weight != 0:
        raise ValueError(f"--loss-cfg-path {path}: lecam_regularization_weight {config.lecam_regularization_weight}; "
                         "LeCam regularisation is not implemented (REPA-E's recipe sets 0)")
    return config


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over C, H, W, averaged over the batch."""
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).sum(1).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(G))) / 2`` (Lim & Ye 2017; taming's ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


class VAELoss:
    """REPA-E's generator and discriminator losses for one batch; ``perceptual`` is a ``PerceptualLoss``
    (or None when ``perceptual_weight`` is 0)."""

    def __init__(self, config: LossConfig, perceptual=None):
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs the LPIPS network")
        self.config, self.perceptual = config, perceptual

    def discriminator_factor(self, step: int) -> float:
        return self.config.discriminator_factor if step >= self.config.discriminator_start else 0.0

    def generator(self, x, recon, posterior, discriminator, step: int) -> dict[str, torch.Tensor]:
        """The VAE's losses (``"loss"`` is their weighted sum); the discriminator is only read."""
        c = self.config
        with torch.autocast(x.device.type, enabled=False):
            x, recon = x.float(), recon.float()
            distance = F.l1_loss if c.reconstruction_loss == "l1" else F.mse_loss
            losses = {"rec": c.reconstruction_weight * distance(x, recon) / torch.exp(torch.tensor(c.logvar_init))}
            total = losses["rec"]
            if c.perceptual_weight > 0:
                losses["perceptual"] = c.perceptual_weight * self.perceptual(x, recon).mean()
                total = total + losses["perceptual"]
            losses["kl"] = c.kl_weight * kl_loss(posterior.mean, posterior.logvar)
            total = total + losses["kl"]
            factor = self.discriminator_factor(step)
            if factor > 0 and c.discriminator_weight > 0:
                losses["gan"] = -discriminator(recon).float().mean()
                total = total + factor * c.discriminator_weight * losses["gan"]
            losses["loss"] = total
        return losses

    def discriminator(self, x, recon, discriminator, step: int) -> dict[str, torch.Tensor]:
        """The discriminator's hinge loss on real ``x`` and the detached reconstruction."""
        with torch.autocast(x.device.type, enabled=False):
            logits_real, logits_fake = discriminator(x.float().detach(), recon.float().detach())
            loss = self.discriminator_factor(step) * hinge_d_loss(logits_real, logits_fake)
        return {"d_loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean(),
                "loss": loss}
