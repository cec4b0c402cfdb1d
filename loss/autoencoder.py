"""The VAE's losses in REPA-E (its ``loss/losses.py``, after taming-transformers' ``vqperceptual.py``).

Generator (the VAE's update), with ``r`` the reconstruction of images ``x`` in [-1, 1]:

    L_G = w_rec * L1(x, r) / exp(logvar) + w_p * LPIPS(x, r) + w_kl * KL(q(z|x) || N(0, I))
          + f * w_d * (-mean D(r))                                        (f = discriminator_factor, once
                                                                            the step reaches discriminator_start)
Discriminator:  L_D = f * hinge(D(x), D(sg(r)))

KL is summed over C, H, W and averaged over the batch; the GAN weight ``w_d`` is fixed (REPA-E has no
adaptive weight). LPIPS is REPA-E's, of ``2x - 1`` (``loss/perceptual.py``). The loss configuration is the
original's YAML (``configs/l1_lpips_kl_gan.yaml``): ``load_loss_config`` reads its keys, including those
REPA-E accepts and ignores, plus ``lpips_normalize`` (false: standard LPIPS); a file that is not such a
mapping, unknown keys, values of the wrong type, negative weights and settings this code does not
implement are refused in one line. All losses run in float32 with autocast off, as the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

# keys of the original's ``losses:`` section that REPA-E's VAE mode reads but does not use
IGNORED_KEYS = {"quantizer_weight", "proj_coef", "lecam_ema_decay"}
# keys whose values scale a term (or delay one): none may be negative
NONNEGATIVE = ("discriminator_start", "discriminator_factor", "discriminator_weight", "perceptual_weight",
               "reconstruction_weight", "lecam_regularization_weight", "kl_weight")
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class LossConfig:
    """The ``losses:`` section of REPA-E's loss YAML, with the original's names and defaults.
    ``lpips_normalize`` is ours: true (REPA-E's) gives LPIPS(2x - 1, 2y - 1), false standard LPIPS(x, y)."""

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
    lpips_normalize: bool = True

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"losses.{f.name} is {value}; give a finite number")
            if f.name in NONNEGATIVE and value < 0:
                raise ValueError(f"losses.{f.name} is {value}; it must be >= 0 (0 turns its term off)")


def _typed(key: str, value, default):
    """``value`` as the type of ``default``; a number may be a string (YAML 1.1 reads 1e-6 as one)."""
    kind = type(default)
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ValueError(f"losses.{key} is {value!r:.40}, not {KINDS[kind]}")
    return value


def _mapping(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} is {type(value).__name__} {value!r:.40}, not a mapping of keys "
                         "(see configs/l1_lpips_kl_gan.yaml)")
    return value


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}{where})") from None
    except UnicodeDecodeError:
        raise ValueError("not a text file") from None


def load_loss_config(path: str | Path) -> LossConfig:
    """``--loss-cfg-path``: REPA-E's YAML (``model.vq_model.quantize_mode`` and ``losses``), checked."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--loss-cfg-path {path}: no such file (REPA-E's configs/l1_lpips_kl_gan.yaml)")
    try:
        return _parse(_read_yaml(path))
    except ValueError as e:
        raise ValueError(f"--loss-cfg-path {path}: {e}") from None


def _parse(raw) -> LossConfig:
    raw = _mapping(raw, "the file")
    known = {f.name: f.default for f in fields(LossConfig)}
    losses = _mapping(raw.get("losses"), "losses")
    unknown = {str(k) for k in set(raw) - {"model", "losses"}}
    unknown |= {f"losses.{k}" for k in set(losses) - set(known) - IGNORED_KEYS}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; the keys are "
                         f"{', '.join(sorted(set(known) | IGNORED_KEYS))}")
    mode = _mapping(_mapping(raw.get("model"), "model").get("vq_model"), "model.vq_model").get("quantize_mode", "vae")
    if mode != "vae":
        raise ValueError(f"quantize_mode {mode!r}; REPA-E trains a KL VAE (quantize_mode: vae)")
    config = LossConfig(**{k: _typed(k, v, known[k]) for k, v in losses.items() if k in known})
    if config.perceptual_loss != "lpips":
        raise ValueError(f"perceptual_loss {config.perceptual_loss!r}; only lpips is available")
    if config.reconstruction_loss not in ("l1", "l2"):
        raise ValueError(f"reconstruction_loss {config.reconstruction_loss!r}; use l1 or l2")
    if config.lecam_regularization_weight != 0:
        raise ValueError(f"lecam_regularization_weight {config.lecam_regularization_weight}; "
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
                losses["perceptual"] = c.perceptual_weight * self.perceptual(x, recon, c.lpips_normalize).mean()
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
