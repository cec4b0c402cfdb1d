"""DMD2's losses (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

- ``distribution_matching_loss``: the generator's distribution-matching gradient (DMD, eq. 2; DMD2
  sec. 4.1) on a noised generated sample, as a loss whose gradient with respect to ``x`` is it.
- ``fake_score_loss``: the fake score's denoising loss with EDM's weighting (EDM Table 1, lambda(sigma)).
- ``gan_generator_loss`` / ``gan_discriminator_loss``: the non-saturating GAN losses of DMD2's
  classifier head on the fake score's bottleneck (DMD2 sec. 4.3).
- ``denoising_step_list``: the teacher timesteps of few-step generation (DMD2 sec. 4.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distribution_matching_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 mse(x, sg(x - g))`` with ``g = nan_to_num((p_real - p_fake) / mean_CHW |p_real|)`` and
    ``p = x - x0`` (DMD eq. 7 with its per-sample normaliser), so ``d loss / d x = g / x.numel()``: ``x``
    moves toward the teacher's denoised estimate and away from the fake score's.

    ``x`` is the generator's output (with its graph); the two estimates are of the same noised ``x``
    at one noise level and may be float64 (the difference is taken there, then cast to ``x``'s dtype).
    """
    with torch.no_grad():
        ref = x.detach().to(torch.promote_types(x0_real.dtype, x0_fake.dtype))
        p_real, p_fake = ref - x0_real, ref - x0_fake
        weight = p_real.abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        grad = torch.nan_to_num(((p_real - p_fake) / weight).to(x.dtype))
    dtype = torch.promote_types(x.dtype, torch.float32)  # at least float32, as DMD2's SD path
    return 0.5 * F.mse_loss(x.to(dtype), (x - grad).detach().to(dtype), reduction="mean")


def fake_score_loss(x0_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                    sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's x0 loss ``mean(lambda(sigma) (x0_pred - x0)^2)``, ``lambda = 1 / sigma^2 + 1 / sigma_data^2``
    (DMD2's EDM fake score; diffusers and DDPM teachers use their own eps objective instead)."""
    weight = (sigma.to(torch.float32) ** -2 + 1.0 / sigma_data**2).view(-1, *([1] * (x0.ndim - 1)))
    return torch.mean(weight * (x0_pred.float() - x0.float()) ** 2)


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean softplus(-D(G(z)))``."""
    return F.softplus(-logits_fake.float()).mean()


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``mean softplus(D(fake)) + mean softplus(-D(real))``."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


def denoising_step_list(num_denoising_step: int, denoising_timestep: int = 1000, grid: int = 1000) -> list[int]:
    """The teacher timesteps a ``num_denoising_step``-step generator starts each step from:
    ``denoising_timestep - 1`` down in strides of ``denoising_timestep // num_denoising_step``
    ([999, 749, 499, 249] for 4 of 1000; [999] for 1), on a teacher grid of ``grid`` timesteps."""
    if not 1 <= num_denoising_step < denoising_timestep <= grid:  # else fewer than num_denoising_step steps
        raise ValueError(f"--num_denoising_step {num_denoising_step} and --denoising_timestep {denoising_timestep}: "
                         f"need 1 <= num_denoising_step < denoising_timestep <= {grid} (the teacher's grid)")
    stride = denoising_timestep // num_denoising_step
    return list(range(denoising_timestep - 1, 0, -stride))[:num_denoising_step]
