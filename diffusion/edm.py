"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

The data is noised as x = y + sigma n; a denoiser D(x; sigma) returns the estimate of y. This module
holds the paper's maths as small functions: the preconditioning of Table 1, the time steps of
Eq. 5, the stochastic sampler of Algorithm 2 (as the official generate.py runs it) and the training
loss of Eq. 2 with the weighting and noise distribution of Table 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def precond_coefficients(
    sigma: torch.Tensor | float, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Table 1, "Network and preconditioning", for
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""
    sigma = torch.as_tensor(sigma)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The noise levels sigma_0 > ... > sigma_{N-1} of Eq. 5 (Table 1, "Time steps"), in float64,
    without the final sigma_N = 0."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (the schedule runs from sigma_max to sigma_min), got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@torch.no_grad()
def edm_sampler(
    net: Callable,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80,
    rho: float = 7,
    S_churn: float = 0,
    S_min: float = 0,
    S_max: float = float("inf"),
    S_noise: float = 1,
) -> torch.Tensor:
    """Algorithm 2 (stochastic sampler with Heun's 2nd order correction) as EDM's generate.py runs it.

    ``net(x, sigma, class_labels)`` returns the denoised x0. The range [sigma_min, sigma_max] is
    clamped to the net's ``sigma_min``/``sigma_max`` where it has them; the state is float64 and the
    result is returned in float64, as in the original. ``randn_like`` is called once per step, also
    when no noise is added (gamma = 0), so a recorded noise stream reproduces the original exactly.
    NFE = 2 num_steps - 1 (no correction on the step to sigma = 0). Runs under ``torch.no_grad``.
    """
    sigma_min = max(sigma_min, getattr(net, "sigma_min", sigma_min))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", sigma_max))
    round_sigma = getattr(net, "round_sigma", torch.as_tensor)
    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho).to(latents.device)
    t_steps = torch.cat([round_sigma(t_steps), torch.zeros_like(t_steps[:1])])  # t_N = 0

    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Increase the noise temporarily (lines 4-6): gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_min, S_max].
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)
        # Euler step (lines 7-8).
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Heun's correction (lines 9-11), skipped on the last step where t_next = 0.
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def edm_loss(
    net: Callable,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Per-element loss lambda(sigma) |D(y + n; sigma) - y|^2 of Eq. 2, with ln sigma ~ N(P_mean, P_std^2)
    and lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1, "Training"); EDM's
    EDMLoss without augmentation. Draws sigma, then n, from the global generator in EDM's order."""
    rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
    sigma = (rnd_normal * P_std + P_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    n = torch.randn_like(images) * sigma
    return weight * (net(images + n, sigma, labels) - images) ** 2
