"""REPA / REG samplers (diffusion/repa_samplers.py): parity with the original code, guidance interval,
REG's dual guidance, time grids and random draws.

The reference outputs in tests/fixtures/repa_samplers_reference.pt were computed by REPA's and REG's
own samplers.py with tests/fixtures/record_repa_samplers.py (see its docstring to re-record), whose
stand-in model and runs are imported here. Each run uses the recorded global seed, so matching also
proves the noise is drawn in the same order and shapes as in the originals.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures.record_repa_samplers import RUNS, SOURCES, StandInSiT, call_args, make_inputs

from diffusion import repa_samplers
from diffusion.guidance import guidance_active
from diffusion.repa_samplers import euler_maruyama_sampler, euler_sampler

FIXTURE = Path(__file__).parent / "fixtures" / "repa_samplers_reference.pt"
ATOL, RTOL = 1e-6, 1e-5  # on the recording machine the match is within 1e-15


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def test_fixture_names_its_sources(ref):
    assert ref["meta"]["sources"] == SOURCES


@pytest.mark.parametrize("name", list(RUNS))
def test_sampler_matches_original_under_same_seed(ref, name):
    _, sampler, _ = RUNS[name]
    kwargs, _ = call_args(name, make_inputs())
    torch.manual_seed(100 + list(RUNS).index(name))
    out = getattr(repa_samplers, sampler)(StandInSiT(), **kwargs)
    assert out.dtype == torch.float64  # the originals return their float64 state
    torch.testing.assert_close(out, ref[f"sample/{name}"], atol=ATOL, rtol=RTOL)
    assert torch.equal(torch.randn(3), ref[f"sample/{name}/rng_after"])  # same number of draws


def test_generator_reproduces_seeded_run_and_leaves_global_rng_alone(ref):
    name = "reg_sde_cls_cfg_interval"
    kwargs, _ = call_args(name, make_inputs())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    generator = torch.Generator().manual_seed(100 + list(RUNS).index(name))
    out = euler_maruyama_sampler(StandInSiT(), generator=generator, **kwargs)
    torch.testing.assert_close(out, ref[f"sample/{name}"], atol=ATOL, rtol=RTOL)
    assert torch.equal(torch.get_rng_state(), state)


class Recorder:
    """Stub model: v = 0.01 (y + 1), v_cls = 0.02 (y + 1), constant in x and t; records every call."""

    def __init__(self, num_classes: int | None = 10):
        if num_classes is not None:
            self.num_classes = num_classes
        self.calls = []

    def __call__(self, x, t, y, cls_token=None):
        self.calls.append(
            {
                "t": t.tolist(),
                "x": x.clone(),
                "y": y.tolist(),
                "dtype": (x.dtype, t.dtype),
                "cls": None if cls_token is None else cls_token.clone(),
            }
        )
        v = (0.01 * (y + 1)).to(x.dtype)[:, None, None, None].expand(x.shape)
        if cls_token is None:
            return v, []
        return v, [], (0.02 * (y + 1)).to(x.dtype)[:, None].expand(cls_token.shape)

    def doubled(self):
        return [(round(c["t"][0], 6), len(c["y"]) == 4) for c in self.calls]


def start(dtype=torch.float32):
    return torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(1), dtype=dtype), torch.tensor(
        [3, 7]
    )


def test_guidance_interval_is_closed():
    assert guidance_active(0.3, 1.5, 0.3, 0.7) and guidance_active(0.7, 1.5, 0.3, 0.7)
    assert not guidance_active(0.29, 1.5, 0.3, 0.7) and not guidance_active(0.71, 1.5, 0.3, 0.7)
    assert not guidance_active(0.5, 1.0, 0.0, 1.0)  # cfg_scale 1: never


def test_ode_guides_exactly_inside_interval_on_all_channels():
    model, (x, y) = Recorder(), start()
    out = euler_sampler(model, x, y, num_steps=10, cfg_scale=3.0, guidance_low=0.25, guidance_high=0.75)
    inside = {0.7, 0.6, 0.5, 0.4, 0.3}
    assert model.doubled() == [(t, t in inside) for t in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)]
    for call in model.calls:  # conditional half first, null class = model.num_classes
        assert call["y"] in ([3, 7], [3, 7, 10, 10]) and call["dtype"] == (torch.float32, torch.float32)
    cond, uncond = 0.01 * (y.double() + 1), 0.01 * 11
    d_sum = 5 * cond + 5 * (uncond + 3.0 * (cond - uncond))  # x_0 = x_1 - 0.1 sum_i d_i
    torch.testing.assert_close(out, x.double() - 0.1 * d_sum[:, None, None, None])


def test_heun_adds_a_correction_except_last_step_guided_as_its_step():
    model, (x, y) = Recorder(), start()
    euler_sampler(model, x, y, num_steps=4, heun=True, cfg_scale=2.0, guidance_low=0.3, guidance_high=0.6)
    # steps 1 -> .75 -> .5 -> .25 -> 0; only the step from t_cur = .5 is guided, both of its evaluations
    assert model.doubled() == [
        (1.0, False),
        (0.75, False),
        (0.75, False),
        (0.5, False),
        (0.5, True),
        (0.25, True),
        (0.25, False),
    ]


def test_cfg_scale_one_runs_conditional_model_only():
    for sampler in (euler_sampler, euler_maruyama_sampler):
        model, (x, y) = Recorder(), start()
        sampler(model, x, y, num_steps=5, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0)
        assert len(model.calls) == 5 and all(len(c["y"]) == 2 for c in model.calls)


def test_sde_grid_nfe_and_no_noise_on_last_step():
    model, (x, y) = Recorder(), start()
    g = torch.Generator().manual_seed(5)
    euler_maruyama_sampler(model, x, y, num_steps=5, cfg_scale=1.5, guidance_high=0.5, generator=g)
    assert model.doubled() == [(1.0, False), (0.76, False), (0.52, False), (0.28, True), (0.04, True)]
    skip = torch.Generator().manual_seed(5)
    torch.randn(4 * x.numel(), dtype=torch.float64, generator=skip)  # 4 noisy steps, none on the last
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=skip))


@pytest.mark.parametrize("cfg_scale, cls_cfg_scale", [(2.0, 3.0), (2.0, 0.0), (1.0, 3.0)])
def test_reg_dual_guidance(cfg_scale, cls_cfg_scale):
    model, (x, y) = Recorder(), start(torch.float64)
    cls = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = euler_maruyama_sampler(
        model,
        x,
        y,
        num_steps=2,
        cfg_scale=cfg_scale,
        cls_latents=cls,
        cls_cfg_scale=cls_cfg_scale,
        generator=torch.Generator().manual_seed(9),
    )
    assert out.shape == x.shape  # latents only: REG discards the final class token
    g = torch.Generator().manual_seed(9)  # REG's draw order: latent noise, then class-token noise
    eps, cls_eps = (torch.randn(s.shape, dtype=torch.float64, generator=g) for s in (x, cls))
    # first step at t=1 on the linear path: score = -x_t, drift = v + x_t; dt = -0.96, w = 2
    uncond, cond = 0.01 * 11, 0.01 * (y.double() + 1)
    v = cond if cfg_scale <= 1 else uncond + cfg_scale * (cond - uncond)
    v_cls = (
        2 * cond if cfg_scale <= 1 or cls_cfg_scale <= 0 else 2 * (uncond + cls_cfg_scale * (cond - uncond))
    )
    x1 = x + (v[:, None, None, None] + x) * -0.96 + math.sqrt(2) * eps * math.sqrt(0.96)
    cls1 = cls + (v_cls[:, None] + cls) * -0.96 + math.sqrt(2) * cls_eps * math.sqrt(0.96)
    second = model.calls[1]
    torch.testing.assert_close(second["x"][:2], x1)
    torch.testing.assert_close(second["cls"][:2], cls1)
    assert len(second["y"]) == (4 if cfg_scale > 1 else 2)


@pytest.mark.parametrize("cfg_scale, cls_cfg_scale", [(2.0, 3.0), (2.0, 0.0), (1.0, 3.0)])
def test_reg_class_token_rides_the_ode_with_dual_guidance(cfg_scale, cls_cfg_scale):
    """Beyond REG: its class token is integrated by the Euler ODE too (velocity = the model's third output),
    guided by REG's rule; the latents' trajectory is the one without a class token."""
    model, (x, y) = Recorder(), start(torch.float64)
    cls = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = euler_sampler(model, x, y, num_steps=4, cfg_scale=cfg_scale, cls_latents=cls, cls_cfg_scale=cls_cfg_scale)
    plain = euler_sampler(Recorder(), x, y, num_steps=4, cfg_scale=cfg_scale)
    torch.testing.assert_close(out, plain)
    uncond, cond = 0.01 * 11, 0.01 * (y.double() + 1)
    v_cls = 2 * cond if cfg_scale <= 1 or cls_cfg_scale <= 0 else 2 * (uncond + cls_cfg_scale * (cond - uncond))
    for i, call in enumerate(model.calls):  # t = 1, .75, .5, .25: the token moved by -0.25 v_cls per step
        torch.testing.assert_close(call["cls"][:2], cls - 0.25 * i * v_cls[:, None])


def test_null_class_from_argument_model_or_repa_default():
    x, y = start()
    for model, null_class, expected in [
        (Recorder(10), None, 10),
        (Recorder(10), 4, 4),
        (Recorder(None), None, 1000),
    ]:
        euler_sampler(model, x, y, num_steps=1, cfg_scale=2.0, null_class=null_class)
        assert model.calls[0]["y"] == [3, 7, expected, expected]


def test_bad_arguments_are_clear_errors():
    model, (x, y) = Recorder(), start()
    with pytest.raises(ValueError, match="no Heun step"):
        euler_maruyama_sampler(model, x, y, heun=True)
    with pytest.raises(ValueError, match="pass cls_latents"):
        euler_maruyama_sampler(model, x, y, cfg_scale=2.0, cls_cfg_scale=2.0)
    with pytest.raises(ValueError, match="unknown path_type"):
        euler_sampler(model, x, y, path_type="Linear")
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        euler_maruyama_sampler(model, x, y, num_steps=0)
    assert model.calls == []
