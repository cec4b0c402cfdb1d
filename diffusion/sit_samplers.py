"""SiT's samplers (willisma/SiT ``transport/``; SiT paper Sec. 3): the probability-flow ODE on any torchdiffeq
solver, the SDE ``dx = [v + w_t score] dt + sqrt(2 w_t) dW`` with Euler-Maruyama or Heun steps and a last step,
and the ODE log-likelihood with Hutchinson's trace estimator. All run forward in SiT's time (t=0 noise, t=1
data) on any ``Transport`` of ``diffusion/sit_transport.py``; ``model(x, t, **model_kwargs)`` is the network (or
its guided form) in SiT's time.
"""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from diffusion.sit_transport import Transport, prior_logp

SDE_METHODS = ("Euler", "Heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")


def sde_drift(transport: Transport, diffusion_form: str, diffusion_norm: float):
    """``x, t, model -> v + w_t score``, the drift of the sampling SDE."""
    def drift(x, t, model, **model_kwargs):
        w_t = transport.path.diffusion(x, t, diffusion_form, diffusion_norm)
        return transport.velocity(x, t, model, **model_kwargs) + w_t * transport.score(x, t, model, **model_kwargs)
    return drift


def euler_maruyama_step(x, t, dt, drift, w_t, model, **model_kwargs):
    """x + drift dt + sqrt(2 w_t) dW, with dW ~ N(0, dt) drawn before the model runs."""
    dw = torch.randn(x.size()).to(x) * torch.sqrt(dt)
    mean_x = x + drift(x, t, model, **model_kwargs) * dt
    return mean_x + torch.sqrt(2 * w_t(x, t)) * dw


def heun_step(x, t, dt, drift, w_t, model, **model_kwargs):
    """The noise first, then a trapezoidal (Heun) step of the drift from the noised point."""
    dw = torch.randn(x.size()).to(x) * torch.sqrt(dt)
    x_hat = x + torch.sqrt(2 * w_t(x, t)) * dw
    k1 = drift(x_hat, t, model, **model_kwargs)
    k2 = drift(x_hat + dt * k1, t + dt, model, **model_kwargs)
    return x_hat + 0.5 * dt * (k1 + k2)


def last_step(transport: Transport, kind: str | None, size: float, drift, x, t, model, **model_kwargs):
    """SiT's last step from t1 = 1 - ``size`` to the data: ``Mean`` (an SDE step without noise), ``Tweedie``
    (E[x1 | x_t] = (x + sigma^2 score) / alpha), ``Euler`` (an ODE step), None (x as it is)."""
    if kind is None:
        return x
    if kind == "Mean":
        return x + drift(x, t, model, **model_kwargs) * size
    if kind == "Euler":
        return x + transport.velocity(x, t, model, **model_kwargs) * size
    alpha_t, sigma_t = transport.path.alpha(t)[0][0], transport.path.sigma(t)[0][0]
    return x / alpha_t + sigma_t**2 / alpha_t * transport.score(x, t, model, **model_kwargs)


def sample_sde(transport: Transport, model, init: torch.Tensor, *, sampling_method: str = "Euler",
               diffusion_form: str = "SBDM", diffusion_norm: float = 1.0, last_step_kind: str | None = "Mean",
               last_step_size: float = 0.04, num_steps: int = 250, progress: bool = False,
               **model_kwargs) -> list[torch.Tensor]:
    """The SDE from noise ``init``: ``num_steps - 1`` steps on linspace(t0, t1), then the last step; returns
    the ``num_steps`` states (the last is the sample). SiT's default is Euler with ``diffusion_form='sigma'``."""
    if sampling_method not in SDE_METHODS:
        raise ValueError(f"unknown SDE --sampling-method {sampling_method!r}; use Euler or Heun")
    if last_step_kind not in LAST_STEPS:
        raise ValueError(f"unknown --last-step {last_step_kind!r}; use None, Mean, Tweedie or Euler")
    size = 0.0 if last_step_kind is None else last_step_size
    t0, t1 = transport.interval(sde=True, eval=True, diffusion_form=diffusion_form, last_step_size=size)
    drift = sde_drift(transport, diffusion_form, diffusion_norm)
    step = euler_maruyama_step if sampling_method == "Euler" else heun_step

    def w_t(x, t):
        return transport.path.diffusion(x, t, diffusion_form, diffusion_norm)

    grid = torch.linspace(t0, t1, num_steps)
    dt, x, states = grid[1] - grid[0], init, []
    with torch.no_grad():
        for t in _progress(grid[:-1], progress):
            x = step(x, torch.ones(x.size(0)).to(x) * t, dt, drift, w_t, model, **model_kwargs)
            states.append(x)
        t_end = torch.ones(init.size(0), device=init.device) * t1
        states.append(last_step(transport, last_step_kind, size, drift, x, t_end, model, **model_kwargs))
    return states


def sample_ode(transport: Transport, model, init, *, sampling_method: str = "dopri5", num_steps: int = 50,
               atol: float = 1e-6, rtol: float = 1e-3, reverse: bool = False, velocity=None, **model_kwargs):
    """The probability-flow ODE dx/dt = v(x, t) with torchdiffeq's ``sampling_method``, from noise (or from data
    with ``reverse``) on the output grid linspace(t0, t1, ``num_steps``): the steps of a fixed-grid solver
    (euler, midpoint, rk4, ...), the times an adaptive one (dopri5, ...) reports at. Returns the states on the
    grid (the last is the sample). ``velocity`` replaces the drift (the likelihood's augmented one)."""
    t0, t1 = transport.interval(eval=True, reverse=reverse)
    velocity = velocity or transport.velocity
    device = init[0].device if isinstance(init, tuple) else init.device
    batch = init[0].size(0) if isinstance(init, tuple) else init.size(0)

    def f(t, x):
        return velocity(x, torch.ones(batch).to(device) * t, model, **model_kwargs)

    tolerances = len(init) if isinstance(init, tuple) else 1
    try:
        return odeint(f, init, torch.linspace(t0, t1, num_steps).to(device), method=sampling_method,
                      atol=[atol] * tolerances, rtol=[rtol] * tolerances)
    except ValueError as error:
        if "Invalid method" in str(error):
            raise ValueError(f"unknown ODE --sampling-method {sampling_method!r}: torchdiffeq's solvers are dopri5, "
                             "dopri8, bosh3, fehlberg2, adaptive_heun, euler, midpoint, heun2, heun3, rk4, "
                             "explicit_adams, implicit_adams") from None
        raise


def ode_likelihood(transport: Transport, model, x: torch.Tensor, *, sampling_method: str = "dopri5",
                   num_steps: int = 50, atol: float = 1e-6, rtol: float = 1e-3, **model_kwargs):
    """``(log p(x) in nats per sample, the noise x maps to)``: the ODE from data to noise with the change of
    log density -div v estimated by Hutchinson's estimator with Rademacher probes (Grathwohl et al. 2019),
    plus the Gaussian prior's log density at the end (SiT's ``sample_ode_likelihood``)."""
    def augmented(state, t, model, **kwargs):
        x, _ = state
        probe = torch.randint(2, x.size(), dtype=torch.float, device=x.device) * 2 - 1
        t = torch.ones_like(t) * (1 - t)
        with torch.enable_grad():
            x.requires_grad = True
            grad = torch.autograd.grad(torch.sum(transport.velocity(x, t, model, **kwargs) * probe), x)[0]
            div = torch.sum(grad * probe, dim=tuple(range(1, x.ndim)))
            v = transport.velocity(x, t, model, **kwargs)
        return -v, div

    with torch.no_grad():  # the states carry no graph; each drift takes its own gradient
        states, delta = sample_ode(transport, model, (x, torch.zeros(x.size(0)).to(x)), sampling_method=sampling_method,
                                   num_steps=num_steps, atol=atol, rtol=rtol, velocity=augmented, **model_kwargs)
    noise = states[-1]
    return prior_logp(noise) - delta[-1], noise


def bits_per_dim(logp: torch.Tensor, dims: int) -> torch.Tensor:
    """-log2 p / dims: the negative log-likelihood in bits per dimension of the sampled space."""
    return -logp / (dims * torch.log(torch.tensor(2.0, dtype=logp.dtype)))


def _progress(grid, show: bool):
    if not show:
        return grid
    from tqdm import tqdm

    return tqdm(grid, desc="SDE steps", leave=False)
