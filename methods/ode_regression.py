"""DMD2's regression pretraining of a one-step Stable Diffusion generator (DMD2 sec. 4.4, its
``main/train_sd_ode.py``): before distribution matching at conditioning timestep 399, the generator learns to map
the teacher's noise to the latents the teacher's ODE made from it (``preprocessing/generate_noise_image_pairs.py``).

One step: the generator (the teacher's UNet, eps prediction) reads the unit noise as x_t at the conditioning
timestep; its x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (float64) and the pair's latents are decoded by the
VAE (TAESD with ``--tiny_vae``), and the loss is LPIPS between the two images in [0, 1] (piq's, with average pooling,
as DMD2's). ``--denoising``: a row holds a trajectory, one point per step of the generator's step list; each item
reads one random point at its timestep.
"""

from __future__ import annotations

import torch

from training.engine import Method, adamw
from training.schedule import constant_with_warmup


class ODERegressionMethod(Method):
    """The generator (``modules["model"]``, a ``DiffusersEps`` with ``generator_sigmas`` set, which the grids and
    ``sample.py --prompt`` read), AdamW (weight decay 0.01, as DMD2's) with DMD2's warm-up, LPIPS ``distance(x, y)``
    of images in [0, 1] per item; ``timesteps``: the conditioning timestep, or the step list with ``denoising``."""

    def __init__(self, generator: torch.nn.Module, codec, distance, alphas_cumprod, *, timesteps: list[int],
                 denoising: bool, lr: float, max_grad_norm: float | None, warmup_step: int, processes: int,
                 grid: torch.Tensor, sampling_record: dict, device, warmup_from: int = 0):
        self.modules = {"model": generator.to(device)}
        self.optimizers = {"opt": adamw([p for p in generator.parameters() if p.requires_grad], lr, weight_decay=0.01)}
        self.emas, self.sampled = {}, "model"
        self.codec, self.distance = codec.to(device), distance.to(device)
        self.abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device=device)
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        self.denoising, self.max_grad_norm, self.device = denoising, max_grad_norm, device
        self.warmup_step, self.processes, self.warmup_from = warmup_step, processes, warmup_from
        self.grid, self.sampling_record = grid, dict(sampling_record)
        self.model_kwargs = {"in_channels": codec.latent_channels,
                             "input_size": generator.unet.config.sample_size}

    def lr_at(self, step: int, base: float, total: int) -> float:
        return constant_with_warmup(step - self.warmup_from, base, self.warmup_step, self.processes)

    def grid_conditions(self, samples: int | None, nrow: int | None) -> tuple[torch.Tensor, int]:
        """The grid shows the first pairs' prompts."""
        n = min(samples or len(self.grid), len(self.grid))
        return self.grid[:n], nrow or max(1, int(n**0.5))

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, timesteps, target latents, conditions)`` of one batch of pairs."""
        noise, target, y = (t.to(self.device) for t in batch)
        n = len(noise)
        if not self.denoising:
            return noise, self.timesteps[:1].expand(n), target, y
        if noise.ndim != 5 or noise.shape[1] != len(self.timesteps):
            raise ValueError(f"--denoising reads trajectories of {len(self.timesteps)} points a pair; these pairs "
                             f"hold {tuple(noise.shape[1:])} (one noise each): drop --denoising")
        index = torch.randint(0, len(self.timesteps), (n,), device=self.device)
        return noise[torch.arange(n, device=self.device), index], self.timesteps[index], target, y

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        x, t, target, y = self.inputs(batch)
        with engine.autocast():
            eps = self.modules["model"](x, t, y)
        abar = self.abar[t].view(-1, 1, 1, 1)
        x0 = ((x.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).float()
        with torch.no_grad():
            real = self.codec.decode(target).float()
        fake = self.codec.decode_with_grad(x0).float()
        with engine.autocast():
            loss = self.distance(fake * 0.5 + 0.5, real * 0.5 + 0.5).float().mean()
        engine.backward(loss)
        norm = engine.step("opt", self.max_grad_norm)
        return {"loss": loss.detach(), **({"grad_norm": norm} if norm is not None else {})}

    def export_weights(self, key: str, weights: dict) -> dict:
        """The generator is saved as DMD2 saves it: the UNet's own state dict (no ``unet.`` prefix)."""
        return {k.removeprefix("unet."): v for k, v in weights.items()} if key == "model" else weights

    def import_weights(self, key: str, weights: dict) -> dict:
        return {f"unet.{k}": v for k, v in weights.items()} if key == "model" else weights
