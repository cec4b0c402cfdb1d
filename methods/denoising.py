"""The training methods of ``train.py`` on the engine (``training/engine.py``).

- ``DenoisingMethod``: DiT and the U-Net, with DiT's objective (eps MSE plus the learned-variance VB
  term) on the DDPM schedule; samples with DDPM / DDIM.
- ``InterpolantMethod``: SiT, REPA and REG. The interpolant's velocity loss, REPA's projection loss
  to frozen encoder features, REG's class-token loss; samples with the Euler ODE / Euler-Maruyama SDE.

Both train one network with AdamW and keep its EMA, under DiT's and REPA's checkpoint keys
``model``, ``ema`` and ``opt``; a checkpoint also records the network's constructor arguments
(``model_kwargs``), which sampling reads back.
"""

from __future__ import annotations

import torch

from diffusion.network import contract
from imagedata.latents import sample_latents as draw_cached_latents
from methods.alignment import encoder_targets
from training.data import random_flip
from training.engine import Method, adamw


class Batches:
    """Turns a loader batch into ``(raw, x, y)``: clean images in [0, 255] for the encoders (None
    unless ``with_raw``), the model input (latents, or pixels in [-1, 1] with ``--vae none``) and labels.

    Images get DiT's random flip (the encoders see the same flip); cached latents pick their flipped
    or unflipped moments; REPA's and REPA-E's layouts are used as stored (no flip), as they do.
    ``flip=False`` uses images and cached latents as stored too (DMD2 flips nothing).
    """

    def __init__(self, kind: str, codec, dataset, device, with_raw: bool = False, flip: bool = True):
        self.kind, self.codec, self.dataset, self.device, self.with_raw = kind, codec, dataset, device, with_raw
        self.flip = flip

    @torch.no_grad()
    def __call__(self, batch):
        if self.kind == "h5":  # REPA-E's images.h5: uint8 images, used as stored (no flip)
            raw, y = (t.to(self.device, non_blocking=True) for t in batch)
            return raw.float(), raw.float() / 127.5 - 1, y
        if self.kind == "h5-latents":  # and its cached moments: z = mean + std eps, unscaled (REPA-E)
            raw, moments, y = (t.to(self.device, non_blocking=True) for t in batch)
            mean, std = moments.chunk(2, dim=1)
            return raw.float(), mean + std * torch.randn_like(mean), y
        if self.kind == "repa":
            raw, moments, y = (t.to(self.device, non_blocking=True) for t in batch)
            mean, std = moments.chunk(2, dim=1)
            return raw.float(), (mean + std * torch.randn_like(mean)) * self.codec.scale, y
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        if self.kind == "latents":
            flipped = torch.rand(x.shape[0]) < 0.5 if self.flip else torch.zeros(x.shape[0], dtype=torch.bool)
            return None, draw_cached_latents(x, flipped, self.dataset.scale), y
        x = random_flip(x)[0] if self.flip else x
        return (x + 1) * 127.5 if self.with_raw else None, self.codec.encode(x), y


class DenoisingMethod(Method):
    """One network, its EMA and AdamW, trained with ``objective(model, x, y, **extra)``: DiT and the U-Net
    as it is (``loss.denoising.DDPMObjective``; ``sampling`` holds the noise schedule). ``lr_schedule(step,
    base, total)``: the learning rate (default constant); the batches' codec decodes the samples."""

    def __init__(self, model: torch.nn.Module, objective, batches: Batches, *, lr: float, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, eps: float = 1e-8, ema_decay: float = 0.9999,
                 max_grad_norm: float | None = None, model_kwargs: dict | None = None, sampling: dict | None = None,
                 lr_schedule=None):
        self.modules = {"model": model.to(batches.device)}
        self.optimizers = {"opt": adamw(model.parameters(), lr, betas, weight_decay, eps)}
        self.emas = {"ema": ("model", ema_decay)}
        self.objective, self.batches, self.max_grad_norm = objective, batches, max_grad_norm
        self.model_kwargs, self.sampling = model_kwargs or {}, sampling or {}
        self.num_classes, self.codec = self.model_kwargs.get("num_classes", 0), batches.codec
        self.lr_schedule = lr_schedule

    def lr_at(self, step: int, base: float, total: int) -> float:
        return self.lr_schedule(step, base, total) if self.lr_schedule else base

    def describe(self) -> list[str]:
        mk = self.model_kwargs
        return [super().describe()[0] + f", input {mk['in_channels']}x{mk['input_size']}x{mk['input_size']}"]

    def flops_per_sample(self) -> float:
        from training.throughput import train_flops_per_sample

        model, mk, device = self.modules["model"], self.model_kwargs, self.batches.device
        inputs = (torch.zeros(1, mk["in_channels"], mk["input_size"], mk["input_size"], device=device),
                  torch.zeros(1, device=device), torch.zeros(1, device=device, dtype=torch.long))
        cls_dim = contract(model).cls_token_dim
        inputs += (torch.zeros(1, cls_dim, device=device),) if cls_dim else ()
        flops = train_flops_per_sample(model.eval(), *inputs)
        model.train()
        return flops

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(x, y, extra objective arguments)`` of one micro-batch."""
        _, x, y = self.batches(batch)
        return x, y, {}

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        x, y, extra = self.inputs(batch)
        with engine.autocast():
            losses = self.objective(self.modules["model"], x, y, **extra)
        engine.backward(losses["loss"])
        norm = engine.step("opt", self.max_grad_norm)
        if norm is not None:
            losses["grad_norm"] = norm
        return losses

    def extra_state(self) -> dict:
        return {"model_kwargs": self.model_kwargs}


class InterpolantMethod(DenoisingMethod):
    """SiT, REPA and REG (``loss.denoising.InterpolantObjective``); ``sampling`` holds the path type.

    With encoders, each micro-batch gets their patch tokens as REPA's targets (and the [CLS] token as
    REG's class token when ``cls``). ``legacy_drop`` (REPA's first runs) drops labels to the null class
    here with that probability, before the model drops them again.
    """

    def __init__(self, *args, encoders=(), cls: bool = False, legacy_drop: float = 0.0, num_classes: int = 1000,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.encoders, self.cls, self.legacy_drop, self.num_classes = list(encoders), cls, legacy_drop, num_classes

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        raw, x, y = self.batches(batch)
        extra = {}
        if self.encoders:
            extra["zs"], cls_token = encoder_targets(self.encoders, raw, reg=self.cls)
            if cls_token is not None:
                extra["cls_token"] = cls_token
        if self.legacy_drop:
            y = torch.where(torch.rand(y.shape[0], device=y.device) < self.legacy_drop, self.num_classes, y)
        return x, y, extra


class LDMOnlyMethod(InterpolantMethod):
    """REPA-E's ``train_ldm_only.py``: a SiT with a latent BatchNorm on the cached latents of a frozen VAE.
    The BatchNorm stays in eval mode, at the VAE's latent statistics, while the rest trains."""

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        contract(engine.module("model")).latent_norm.eval()
        return super().train_step(engine, batch)
