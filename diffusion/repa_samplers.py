"""The samplers of REPA and REG (``samplers.py`` of sihyun-yu/REPA @ 67f7145 and Martinser/REG @ 021ea2e).

Time runs from t=1 (noise) to t=0 (data) and the model predicts the velocity ``v = eps - x``
(linear path); ``diffusion/transport.py`` holds the interpolant maths and a table of how this
differs from DiT and SiT. Both samplers follow the originals step for step:

- the state is float64; the model is called with ``x`` and ``t`` cast to the latents' dtype and its
  output is cast back to float64. The result is the float64 state (the originals' generate.py casts
  it to float32 before decoding).
- guidance: where ``guidance_active(t_cur, cfg_scale, guidance_low, guidance_high)`` (cfg_scale > 1 and
  t_cur in [guidance_low, guidance_high]) the batch is doubled with the null class and the two halves
  combined by ``guide`` on all channels; elsewhere the conditional model runs alone.
- the null class is ``null_class``, by default ``model.num_classes`` when the model has that attribute
  (our models do), else 1000, the value REPA and REG hard-code.
- ``model(x, t, y=y)`` returns a tuple whose first element is the velocity, ``(v, zs)`` for SiT/REPA;
  with REG's class token, ``model(x, t, y=y, cls_token=c)`` returns ``(v, zs, v_cls)``.

``euler_sampler`` (ODE) takes ``num_steps`` Euler steps on t = linspace(1, 0, num_steps + 1), with
Heun's correction on every step but the last when ``heun`` (NFE num_steps or 2 num_steps - 1).
``euler_maruyama_sampler`` (SDE) steps on t = linspace(1, 0.04, num_steps) then 0: num_steps - 1
Euler-Maruyama steps, then a last step 0.04 -> 0 along the drift without noise (NFE num_steps).
That drift carries the score term, so with an exact model the sample is x_0 - 0.04 eps, not x_0:
the originals leave this much noise in their samples too (tests/test_sampling_oracle.py).
"""

from __future__ import annotations

import torch

from .guidance import guidance_active, guide
from .transport import check_path_type, diffusion_coefficient, sde_drift

DEFAULT_NULL_CLASS = 1000  # REPA's and REG's hard-coded ImageNet null class


def _null_labels(model, y: torch.Tensor, null_class: int | None) -> torch.Tensor:
    if null_class is None:
        null_class = getattr(model, "num_classes", DEFAULT_NULL_CLASS)
    return torch.full_like(y, null_class)


def _predict(
    model,
    x: torch.Tensor,
    t_cur: torch.Tensor,
    y: torch.Tensor,
    y_null: torch.Tensor,
    guided: bool,
    dtype: torch.dtype,
    cls: torch.Tensor | None = None,
):
    """One model evaluation at time ``t_cur`` on ``[x; x]`` with labels ``[y; y_null]`` when ``guided``.

    Returns the float64 model inputs and outputs over the whole (possibly doubled) batch:
    ``(x_in, t_in, v, cls_in, v_cls)``; the last two are None without a class token.
    """
    if guided:
        x, y = torch.cat([x, x]), torch.cat([y, y_null])
        cls = None if cls is None else torch.cat([cls, cls])
    t = torch.full((x.shape[0],), float(t_cur), dtype=torch.float64, device=x.device)
    extra = {} if cls is None else {"cls_token": cls.to(dtype)}
    out = model(x.to(dtype), t.to(dtype), y=y, **extra)
    v_cls = None if cls is None else out[2].to(torch.float64)
    return x, t, out[0].to(torch.float64), cls, v_cls


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _guide_cls(d_cls: torch.Tensor, guided: bool, cls_cfg_scale: float) -> torch.Tensor:
    """REG's rule for the class token's drift: guided with ``cls_cfg_scale`` inside the guidance
    interval when it is > 0, else the conditional half."""
    if not guided:
        return d_cls
    return guide(d_cls, cls_cfg_scale) if cls_cfg_scale > 0 else d_cls.chunk(2)[0]


def _check_cls(cls_latents, cls_cfg_scale) -> None:
    if cls_latents is None and cls_cfg_scale != 0:
        raise ValueError(
            "cls_cfg_scale guides REG's class token; pass cls_latents, random class tokens (N, cls_dim)"
        )


@torch.no_grad()
def euler_sampler(
    model,
    latents: torch.Tensor,
    y: torch.Tensor,
    num_steps: int = 20,
    heun: bool = False,
    cfg_scale: float = 1.0,
    guidance_low: float = 0.0,
    guidance_high: float = 1.0,
    path_type: str = "linear",
    null_class: int | None = None,
    cls_latents: torch.Tensor | None = None,
    cls_cfg_scale: float = 0.0,
    guided_channels: int | None = None,
) -> torch.Tensor:
    """Probability-flow ODE dx = v dt from t=1 (``latents``, noise) to t=0, Euler or Heun (REPA ``euler_sampler``).

    x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i); with ``heun`` (except on the last step, which ends at
    t=0) x_{i+1} = x_i + (t_{i+1} - t_i) (v(x_i, t_i) + v(x'_{i+1}, t_{i+1})) / 2 with x'_{i+1} the Euler
    point. Whether the Heun evaluation is guided is decided at t_i, as in REPA. The update does not
    depend on the path (the model predicts v whichever it is); ``path_type`` is checked and otherwise
    unused, so one set of keyword arguments serves both samplers, as in REPA's generate.py.

    Beyond REPA: ``guided_channels=k`` guides the first k channels only (``guide``); REG's class token
    ``cls_latents`` is integrated along with the latents by the same steps (its velocity is the model's
    third output), guided by ``cls_cfg_scale`` under REG's rule (see ``euler_maruyama_sampler``).
    """
    _check_steps(num_steps)
    check_path_type(path_type)
    _check_cls(cls_latents, cls_cfg_scale)
    dtype, y_null = latents.dtype, _null_labels(model, y, null_class)
    t_steps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)

    def velocity(x, cls, t, guided):
        _, _, v, _, v_cls = _predict(model, x, t, y, y_null, guided, dtype, cls)
        v = guide(v, cfg_scale, guided_channels) if guided else v
        return v, None if cls is None else _guide_cls(v_cls, guided, cls_cfg_scale)

    x_next = latents.to(torch.float64)
    cls_next = None if cls_latents is None else cls_latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur, cls_cur = x_next, cls_next
        guided = guidance_active(t_cur, cfg_scale, guidance_low, guidance_high)
        d_cur, dc_cur = velocity(x_cur, cls_cur, t_cur, guided)
        x_next = x_cur + (t_next - t_cur) * d_cur
        cls_next = None if cls_cur is None else cls_cur + (t_next - t_cur) * dc_cur
        if heun and i < num_steps - 1:
            d_prime, dc_prime = velocity(x_next, cls_next, t_next, guided)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
            if cls_cur is not None:
                cls_next = cls_cur + (t_next - t_cur) * (0.5 * dc_cur + 0.5 * dc_prime)
    return x_next


@torch.no_grad()
def euler_maruyama_sampler(
    model,
    latents: torch.Tensor,
    y: torch.Tensor,
    num_steps: int = 20,
    heun: bool = False,
    cfg_scale: float = 1.0,
    guidance_low: float = 0.0,
    guidance_high: float = 1.0,
    path_type: str = "linear",
    cls_latents: torch.Tensor | None = None,
    cls_cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
    null_class: int | None = None,
    guided_channels: int | None = None,
) -> torch.Tensor:
    """Reverse SDE dx = [v - 1/2 w_t score] dt + sqrt(w_t) dW, w_t = 2t (see ``transport.diffusion_coefficient``),
    by Euler-Maruyama from t=1 (``latents``) to t=0 (REPA / REG ``euler_maruyama_sampler``).

    x_{i+1} = x_i + d_i (t_{i+1} - t_i) + sqrt(w_{t_i}) sqrt(|t_{i+1} - t_i|) z_i with z_i ~ N(0, I) drawn
    fresh each step in float64 (from ``generator`` if given, else the global RNG: a seeded run matches
    the originals); the last step 0.04 -> 0 is x + d (t_N - t_{N-1}), no noise. Under guidance the
    drift d, not v, is guided (the same thing: d is linear in v).

    REG: ``cls_latents`` (N, cls_dim), random N(0, I) class tokens, are integrated jointly with the
    latents (noise drawn after the latents' noise each step). Inside the guidance interval their drift is
    guided with ``cls_cfg_scale`` if it is > 0, else the conditional drift is used, REG's rule; outside
    it, or with ``cfg_scale <= 1``, it is conditional. Only the latents are returned: REG discards the
    final class token.

    ``guided_channels=k`` guides the first k channels of the drift only (``guide``).

    ``heun`` exists so the ODE and SDE samplers take the same arguments; REPA ignores it here, and
    ``heun=True`` raises instead of silently running plain Euler-Maruyama.
    """
    if heun:
        raise ValueError(
            "euler_maruyama_sampler has no Heun step (REPA's ignores the flag); "
            "use heun=False, or euler_sampler(heun=True) for Heun's method on the ODE"
        )
    _check_steps(num_steps)
    check_path_type(path_type)
    _check_cls(cls_latents, cls_cfg_scale)
    dtype, y_null = latents.dtype, _null_labels(model, y, null_class)
    t_steps = torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64)
    t_steps = torch.cat([t_steps, torch.tensor([0.0], dtype=torch.float64)])

    def noise_like(x):
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)

    x_next = latents.to(torch.float64)
    cls_next = None if cls_latents is None else cls_latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        last = i == num_steps - 1
        dt = t_next - t_cur
        x_cur, cls_cur = x_next, cls_next
        guided = guidance_active(t_cur, cfg_scale, guidance_low, guidance_high)
        if not last:
            eps_i = noise_like(x_cur)
            cls_eps_i = None if cls_cur is None else noise_like(cls_cur)

        x_in, t_in, v, cls_in, v_cls = _predict(model, x_cur, t_cur, y, y_null, guided, dtype, cls_cur)
        d_cur = sde_drift(v, x_in, t_in, path_type)
        if guided:
            d_cur = guide(d_cur, cfg_scale, guided_channels)
        x_next = x_cur + d_cur * dt
        if cls_cur is not None:
            d_cls = _guide_cls(sde_drift(v_cls, cls_in, t_in, path_type), guided, cls_cfg_scale)
            cls_next = cls_cur + d_cls * dt

        if not last:
            sqrt_w = torch.sqrt(diffusion_coefficient(t_cur))
            x_next = x_next + sqrt_w * (eps_i * torch.sqrt(dt.abs()))
            if cls_cur is not None:
                cls_next = cls_next + sqrt_w * (cls_eps_i * torch.sqrt(dt.abs()))
    return x_next
