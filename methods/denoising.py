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
from methods.alignment import encoder_targets
from training.data import Batches
from training.engine import Method, adamw


class DenoisingMethod(Method):
    """One network, its EMA and AdamW, trained with ``objective(model, x, y, **extra)``: DiT and the U-Net
    as it is (``loss.denoising.DDPMObjective``; ``sampling`` holds the noise schedule). ``lr_schedule(step,
    base, total)``: the learning rate (default constant); the batches' codec decodes the samples."""

    def __init__(self, model: torch.nn.Module, objective, batches: Batches, *, lr: float, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, eps: float = 1e-8, ema_decay: float = 0.9999,
                 max_grad_norm: float | None = None, model_kwargs: dict | None = None, sampling: dict | None = None,
                 lr_schedule=None, grid_cfg_scale: float | None = None):
        self.modules = {"model": model.to(batches.device)}
        self.optimizers = {"opt": adamw(model.parameters(), lr, betas, weight_decay, eps)}
        self.emas = {"ema": ("model", ema_decay)}
        self.objective, self.batches, self.max_grad_norm = objective, batches, max_grad_norm
        self.model_kwargs, self.sampling = model_kwargs or {}, sampling or {}
        self.num_classes, self.codec = self.model_kwargs.get("num_classes", 0), batches.codec
        self.lr_schedule, self.grid_cfg_scale = lr_schedule, grid_cfg_scale

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
