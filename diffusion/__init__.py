"""DiT's diffusion: DDPM / IDDPM maths, timestep respacing and classifier-free guidance.

``create_diffusion`` takes the same arguments as the official DiT release and builds the
same process. The default (``learn_sigma=True``, MSE) trains eps with an MSE loss plus the
variational bound term for the learned variance (IDDPM's L_hybrid).
"""

from __future__ import annotations

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps

# train.py's --noise-schedule names -> create_diffusion's (IDDPM: "cosine" is squaredcos_cap_v2)
NOISE_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def create_diffusion(
    timestep_respacing,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> SpacedDiffusion:
    """A diffusion over ``diffusion_steps`` base steps, sampled on the steps ``timestep_respacing``
    keeps (see ``space_timesteps``: "250", "ddim50", "10,20,30", a list of ints; None or ""
    keeps all of them).

    use_kl: train on the rescaled variational bound alone (RESCALED_KL); otherwise MSE, whose
    VB term is scaled by T / 1000 when ``rescale_learned_sigmas`` (RESCALED_MSE).
    predict_xstart: the model predicts x_0 instead of eps. learn_sigma: the model also outputs
    the LEARNED_RANGE variance (2C channels); otherwise the variance is fixed, beta_t
    (FIXED_LARGE) or beta_tilde_t when ``sigma_small`` (FIXED_SMALL).
    """
    if not isinstance(diffusion_steps, int) or diffusion_steps < 2:
        raise ValueError(f"diffusion_steps must be an integer >= 2, got {diffusion_steps!r}")
    betas = gd.get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    use_timesteps = space_timesteps(diffusion_steps, timestep_respacing)
    if len(use_timesteps) < 2:
        raise ValueError(
            f"timestep respacing {timestep_respacing!r} keeps {len(use_timesteps)} step; "
            "a diffusion needs at least 2"
        )
    return SpacedDiffusion(
        use_timesteps=use_timesteps,
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
    )


__all__ = ["create_diffusion", "space_timesteps", "SpacedDiffusion", "gd"]
