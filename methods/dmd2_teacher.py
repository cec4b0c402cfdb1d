"""DMD2's view of a teacher: any model of the repository as an x0-predictor at a noise level.

A ``Teacher`` reads a network of the teacher's kind (the frozen teacher, its trainable copy the fake
score, the generator) through ``diffusion.denoiser`` on the variance-preserving input
``x_vp = (x0 + sigma eps) / sqrt(1 + sigma^2)`` and adds what DMD2 needs beside it:

- ``sigmas``: the teacher's own time range as ``GRID`` = 1000 noise levels, ascending. DMD2 draws
  the DM loss's level from indices [2%, 98%] of it and the fake score's from all of it; the generator's
  conditioning level is one of it (``--conditioning_timestep``, index 999 by default). DDPM teachers:
  their abar table; interpolant teachers: REPA's t = i / 999 (index 999 is pure noise, t = 1; a SiT
  trained in SiT's own time reads it through ``time_convention``); EDM: the
  Karras grid (sigma_min 0.002, sigma_max 80, rho 7), flipped so that index 0 is the smallest, as
  DMD2's ``EDMGuidance.karras_sigmas``.
- ``x0``: the denoised estimate in float64, with classifier-free guidance through the null class
  (DMD2's real score; the fake score never guides).
- ``fake_score_loss``: the teacher's own objective on the fake score: DiT's / the U-Net's (eps MSE,
  plus the VB term with learned sigma), SiT's velocity loss, EDM's lambda-weighted x0 loss on the
  Karras grid (DMD2's ``compute_loss_fake``), eps MSE for diffusers UNets.
- ``bottleneck``: the features DMD2's GAN head reads from the fake score: EDM's encoder output, a
  U-Net's middle block (diffusers: ``mid_block``), a DiT's / SiT's tokens after block depth / 2 as a
  (N, hidden, h, w) grid.
"""

from __future__ import annotations

import math

import torch

from diffusion.denoiser import (
    DDPMDenoiser,
    Denoiser,
    EDMDenoiser,
    FlowDenoiser,
    ddpm_sigmas,
    flow_sigma,
    noised,
)
from diffusion.network import bottleneck_module, contract
from diffusion.transport import expand_t_like_x

GRID = 1000  # DMD2's --num_train_timesteps


class _Features(Exception):
    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


class Teacher:
    """A teacher family; subclasses fill in ``sigmas``, ``adapter`` and ``fake_score_loss``. ``model`` is
    the frozen teacher network; ``null`` its null label for guidance (None: it has none)."""

    family: str
    sigmas: torch.Tensor
    prompts = None  # a text-to-image teacher's training prompts (methods.dmd2_text.Prompts)
    encoder = None  # and its prompt encoder

    def __init__(self, model: torch.nn.Module, null=None):
        self.model, self.null = model, null

    def adapter(self, net: torch.nn.Module) -> Denoiser:
        raise NotImplementedError

    @property
    def unit_noise(self) -> bool:
        """Whether the generator's top-level input is unit noise (``diffusion.network.Contract.unit_noise``)."""
        return contract(self.model).unit_noise

    def fake_score_loss(self, net: torch.nn.Module, x0: torch.Tensor, y) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, index: torch.Tensor) -> torch.Tensor:
        """The noise levels of grid indices (clamped to the grid)."""
        return self.sigmas.to(index.device)[index.clamp(0, GRID - 1)]

    def x0(self, net: torch.nn.Module, x_vp: torch.Tensor, sigma: torch.Tensor, y, cfg_scale: float = 1.0
           ) -> torch.Tensor:
        """``net``'s denoised estimate in float64; with ``cfg_scale > 1`` guided by the null label,
        ``x0_u + cfg_scale (x0_c - x0_u)`` (linear in eps, so the same as guiding eps)."""
        den = self.adapter(net)
        if cfg_scale <= 1.0:
            return den(x_vp, sigma, y, x0_dtype=torch.float64).x0
        if self.null is None:
            raise ValueError(f"--real_guidance_scale {cfg_scale} needs the teacher's null class, which it never learned; "
                             "distil it with --real_guidance_scale 1")
        x0 = den(torch.cat([x_vp, x_vp]), torch.cat([sigma, sigma]), self.with_null(y), x0_dtype=torch.float64).x0
        cond, uncond = x0.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    def with_null(self, y):
        """``cat([y, null labels])``."""
        null = self.null.to(y.device).expand_as(y) if torch.is_tensor(self.null) else torch.full_like(y, self.null)
        return torch.cat([y, null.to(y.dtype)])

    def bottleneck(self, net: torch.nn.Module, x_vp: torch.Tensor, sigma: torch.Tensor, y) -> torch.Tensor:
        """The bottleneck features of ``net`` at ``(x_vp, sigma)``, as (N, C, h, w); the rest of the network
        does not run."""
        module = bottleneck_module(net)

        def stop(_module, _inputs, output):
            raise _Features(output)

        handle = module.register_forward_hook(stop)
        try:
            self.adapter(net)(x_vp, sigma, y)
        except _Features as found:
            features = found.features
        else:
            raise RuntimeError(f"{type(module).__name__} did not run in {type(net).__name__}'s forward")
        finally:
            handle.remove()
        if features.ndim == 3:  # transformer tokens (N, T, D) -> (N, D, h, w)
            side = math.isqrt(features.shape[1])
            features = features.transpose(1, 2).reshape(features.shape[0], -1, side, side)
        return features


class DDPMTeacher(Teacher):
    """An eps model on its abar table (DiT, the U-Net, a diffusers UNet behind ``DiffusersEps``);
    ``objective`` is its own training loss (``loss.denoising.DDPMObjective``) or None for eps MSE."""

    family = "ddpm"

    def __init__(self, model, alphas_cumprod, objective=None, null=None):
        super().__init__(model, null)
        self.alphas_cumprod, self.objective = alphas_cumprod, objective
        self.sigmas = ddpm_sigmas(alphas_cumprod)

    def adapter(self, net):
        return DDPMDenoiser(net, self.alphas_cumprod)

    def fake_score_loss(self, net, x0, y):
        if self.objective is not None:
            return self.objective(net, x0, y)["loss"]
        index = torch.randint(0, GRID, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        pred = self.adapter(net)(noised(x0, self.sigma(index), eps), self.sigma(index), y)
        return torch.mean((pred.eps.float() - eps.float()) ** 2)


class FlowTeacher(Teacher):
    """A velocity model on its interpolant path (SiT, REPA); ``objective`` its
    ``loss.denoising.InterpolantObjective`` (without projection loss)."""

    family = "flow"

    def __init__(self, model, path_type: str, objective, null=None):
        super().__init__(model, null)
        self.path_type, self.objective = path_type, objective
        self.sigmas = flow_sigma(torch.linspace(0, 1, GRID, dtype=torch.float64), path_type)

    def adapter(self, net):
        return FlowDenoiser(net, self.path_type)

    def fake_score_loss(self, net, x0, y):
        return self.objective(net, x0, y)["loss"]


class EDMTeacher(Teacher):
    """An EDM network (``models.edm_unet.EDMPrecond``, x0 with preconditioning); no null class."""

    family = "edm"

    def __init__(self, model, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 sigma_data: float = 0.5):
        from diffusion.edm import karras_sigmas

        super().__init__(model, None)
        self.sigmas = karras_sigmas(GRID, sigma_min, sigma_max, rho).to(torch.float64).flip(0)
        self.sigma_data = sigma_data

    def adapter(self, net):
        return EDMDenoiser(net)

    def fake_score_loss(self, net, x0, y):
        from loss.dmd import fake_score_loss

        sigma = self.sigma(torch.randint(0, GRID, (x0.shape[0],), device=x0.device))
        x = x0 + expand_t_like_x(sigma, x0).to(x0.dtype) * torch.randn_like(x0)
        return fake_score_loss(net(x, sigma.to(x0.dtype), y), x0, sigma, self.sigma_data)

    def bottleneck(self, net, x_vp, sigma, y):
        s = expand_t_like_x(sigma.to(torch.float64), x_vp)
        x = (torch.sqrt(1 + s**2) * x_vp.to(torch.float64)).to(x_vp.dtype)
        return net(x, sigma.to(x_vp.dtype), y, return_bottleneck=True)
