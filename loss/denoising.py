"""Training objectives: ``objective(model, x, y, **extra) -> dict`` of named scalar losses.

``DDPMObjective`` is DiT's (Ho et al., 2020 eps-MSE plus the learned-variance VB term of
Nichol & Dhariwal, 2021). ``InterpolantObjective`` is the SiT / REPA / REG one, in the
REPA convention (t = 0 data, t = 1 noise):

    x_t = alpha_t x + sigma_t eps,   v* = d_alpha_t x + d_sigma_t eps          (SiT eq. 2, v-prediction)
    L = E ||v_theta(x_t, t, y) - v*||^2                                         (denoising)
      + proj_coeff * E[-1/T sum_n cos(h_phi(h_n), y*_n)]                        (REPA eq. 8)
      + cls * E ||v_theta^cls - v*_cls||^2                                      (REG eq. 7)

where the class token ``cls`` (REG) is noised with the same ``t`` and its own noise. REPA-E's SiT
normalises the clean latents first with its own BatchNorm (no affine parameters).
Every entry of the returned dict is a batch mean; ``"loss"`` is the weighted total that
``train.py`` back-propagates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.gaussian_diffusion import mean_flat
from diffusion.network import latent_norm
from diffusion.transport import check_path_type, interpolate, sample_time, target_velocity


def projection_loss(targets: list[torch.Tensor], projections: list[torch.Tensor]) -> torch.Tensor:
    """REPA's alignment loss: negative cosine similarity per token, averaged over tokens, encoders and batch.

    ``targets[k]`` are the frozen encoder's tokens and ``projections[k]`` the projector outputs,
    both (N, T, D_k). Computed in float32: under fp16 autocast the normalisation of large
    features overflows (github.com/sihyun-yu/REPA issue #46).
    """
    if len(targets) != len(projections):
        raise ValueError(f"{len(targets)} encoder feature sets for {len(projections)} projectors")
    total = 0.0
    for z, z_tilde in zip(targets, projections):
        if z.shape != z_tilde.shape:
            raise ValueError(f"encoder tokens {tuple(z.shape)} do not match projector output {tuple(z_tilde.shape)}")
        cos = (F.normalize(z.float(), dim=-1) * F.normalize(z_tilde.float(), dim=-1)).sum(dim=-1)
        total = total + (-cos).mean(dim=1)
    return (total / len(targets)).mean()


class InterpolantObjective:
    """SiT / REPA / REG training loss (see the module docstring).

    ``proj_coeff`` weights the projection loss (0 for plain SiT), ``cls_coeff`` REG's class-token
    loss (0 for REPA). Only v-prediction is defined, as in REPA and REG.
    """

    def __init__(self, path_type: str = "linear", weighting: str = "uniform", prediction: str = "v",
                 proj_coeff: float = 0.5, cls_coeff: float = 0.0):
        if prediction != "v":
            raise ValueError(f"--prediction {prediction!r} is not supported: REPA and REG train v-prediction only")
        check_path_type(path_type)
        self.path_type, self.weighting = path_type, weighting
        self.proj_coeff, self.cls_coeff = proj_coeff, cls_coeff

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training times (N, 1, 1, 1) and noise for latents ``x``, in that order (as REPA and REPA-E draw)."""
        t = sample_time(x.shape[0], self.weighting, self.path_type, device=x.device).to(x.dtype)
        return t, torch.randn_like(x)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, zs: list[torch.Tensor] | None = None,
                 cls_token: torch.Tensor | None = None, t: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, align_only: bool = False) -> dict[str, torch.Tensor]:
        """Losses of clean latents ``x``. A model with a latent BatchNorm (``bn``, REPA-E) sees ``bn(x)``:
        batch statistics in train mode, running ones in eval mode; the norm is read from the network
        under any DDP / compile wrapper (a SyncBatchNorm syncs whenever a process group exists). ``t`` and ``noise``,
        when given, replace fresh draws (REPA-E reuses the VAE step's in the SiT step). ``align_only``
        runs the first ``encoder_depth`` blocks only and returns the projection loss, which is
        differentiable with respect to ``x`` (REPA-E's VAE step)."""
        bn = latent_norm(model)
        if bn is not None:
            x = bn(x)
        if t is None or noise is None:
            t, noise = self.draw(x)
        x_t = interpolate(x, noise, t, self.path_type)
        if align_only:
            proj = projection_loss(zs or [], model(x_t, t.flatten(), y, align_only=True)[1])
            return {"proj": proj, "loss": proj}
        target = target_velocity(x, noise, t, self.path_type)

        kwargs = {}
        if cls_token is not None:  # REG: noise the class token on the same path, same t
            cls_noise = torch.randn_like(cls_token)
            kwargs["cls_token"] = interpolate(cls_token, cls_noise, t, self.path_type)
            cls_target = target_velocity(cls_token, cls_noise, t, self.path_type)
        out = model(x_t, t.flatten(), y, **kwargs)

        losses = {"denoise": mean_flat((out[0].float() - target.float()) ** 2).mean()}
        total = losses["denoise"]
        if self.proj_coeff > 0:
            losses["proj"] = projection_loss(zs or [], out[1])
            total = total + self.proj_coeff * losses["proj"]
        if cls_token is not None:
            losses["cls"] = mean_flat((out[2].float() - cls_target.float()) ** 2).mean()
            total = total + self.cls_coeff * losses["cls"]
        losses["loss"] = total
        return losses


class DDPMObjective:
    """DiT's objective: ``t ~ U{0..T-1}`` and ``GaussianDiffusion.training_losses`` (MSE + learned-sigma VB)."""

    def __init__(self, diffusion):
        self.diffusion = diffusion

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), device=x.device)
        terms = self.diffusion.training_losses(model, x, t, dict(y=y))
        return {"loss": terms["loss"].mean()}


class SiTObjective:
    """SiT's own loss (``diffusion.sit_transport.Transport.training_losses``): any path (Linear, GVP, VP), target
    (velocity, score, noise) and loss weight, in SiT's time. ``model`` is this repository's SiT built with
    ``time_convention="sit"``, whose output in REPA's time is the negated network output at 1 - t; the loss
    sees the network as SiT's does, ``(x, t, y) -> output``."""

    def __init__(self, transport):
        self.transport = transport

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        def network(x_t, t, y):
            return -model(x_t, 1 - t, y)[0]

        return {"loss": self.transport.training_losses(network, x, dict(y=y))["loss"].mean()}
