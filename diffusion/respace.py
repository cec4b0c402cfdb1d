"""Timestep respacing: run a diffusion over a subset of the base process's steps
(IDDPM, Nichol & Dhariwal 2021, sec 4; DDIM, Song et al. 2021, sec 4.2)."""

from __future__ import annotations

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def _ddim_steps(num_timesteps: int, desired_count: int) -> set[int]:
    # the DDIM paper's uniform schedule: the first integer stride giving exactly that many steps
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired_count:
            return set(range(0, num_timesteps, stride))
    possible = sorted({len(range(0, num_timesteps, s)) for s in range(1, num_timesteps)})
    nearest = sorted(possible, key=lambda n: abs(n - desired_count))[:2]
    raise ValueError(
        f"cannot take exactly {desired_count} DDIM steps from {num_timesteps} with an integer stride; "
        f"nearest counts that work: {', '.join(f'ddim{n}' for n in sorted(nearest))}"
    )


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """The base-process steps to keep, as a set of indices in 0..num_timesteps-1.

    ``section_counts`` is a list of ints or a comma-separated string: the base steps are cut
    into that many near-equal sections (the first ``num_timesteps % len`` one step longer)
    and section i keeps ``section_counts[i]`` evenly strided steps, its first and last
    included, rounded. So ``"250"`` of 1000 keeps 0, 4, 8, ..., 999. ``"ddimN"`` instead keeps
    ``range(0, num_timesteps, stride)`` for the integer stride giving exactly N steps
    (``"ddim50"`` -> 0, 20, ..., 980).
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        try:
            if spec.startswith("ddim"):
                count = int(spec[len("ddim") :])
            else:
                section_counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad timestep respacing {spec!r}: expected a step count such as '250', "
                "comma-separated counts per section such as '10,15,20', or 'ddimN' such as 'ddim50'"
            ) from None
        if spec.startswith("ddim"):
            return _ddim_steps(num_timesteps, count)

    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            where = f" section {i} of" if len(section_counts) > 1 else ""
            raise ValueError(
                f"cannot take {count} steps from{where} {size} diffusion steps "
                f"(a count must be between 1 and {size})"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # the position accumulates by repeated addition; rounding is Python's (half to even)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


class SpacedDiffusion(GaussianDiffusion):
    """A ``GaussianDiffusion`` over the kept steps tau_0 < tau_1 < ... of a base process.

    Its betas are beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}} (abar_{tau_{-1}} = 1), so
    abar'_i = abar_{tau_i} exactly. Every model call receives the base index tau_i, not i
    (``timestep_map[i] = tau_i``), so one network serves any respacing.

    use_timesteps: the base steps to keep (see ``space_timesteps``); kwargs: those of the base
    ``GaussianDiffusion`` (``betas`` are the base betas).
    """

    def __init__(self, use_timesteps, **kwargs):
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        self.original_num_steps = len(base_betas)
        self.use_timesteps = set(use_timesteps)
        outside = [s for s in self.use_timesteps if not 0 <= s < self.original_num_steps]
        if outside:
            raise ValueError(f"timesteps {sorted(outside)} are outside 0..{self.original_num_steps - 1}")
        self.timestep_map = sorted(self.use_timesteps)

        base_abar = np.cumprod(1.0 - base_betas)
        kept_abar = base_abar[self.timestep_map]
        kwargs["betas"] = 1 - kept_abar / np.append(1.0, kept_abar[:-1])
        super().__init__(**kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _OriginalTimesteps):
            return model
        return _OriginalTimesteps(model, self.timestep_map)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)


class _OriginalTimesteps:
    """Calls ``model(x, timestep_map[t], **kwargs)``: spaced index in, base index to the model."""

    def __init__(self, model, timestep_map):
        self.model = model
        self.timestep_map = torch.tensor(timestep_map)

    def __call__(self, x, t, **kwargs):
        return self.model(x, self.timestep_map.to(device=t.device, dtype=t.dtype)[t], **kwargs)
