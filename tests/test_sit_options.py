"""SiT's transport options (diffusion/sit_transport.py, diffusion/sit_samplers.py) against the original code.

The reference outputs in tests/fixtures/sit_options_reference.pt were computed by willisma/SiT's own
``transport/`` with tests/fixtures/record_sit_options.py (see its docstring to re-record): the loss of every
path, target and loss weight; SDE trajectories for every diffusion form, both step methods and every last
step; ODE trajectories for fixed-grid and adaptive torchdiffeq solvers, forward and reverse; and the ODE
log-likelihood with a seeded Hutchinson estimator. Fixed-step results agree to 1e-5 in float32; adaptive
solvers to a tolerance scaled by their rtol.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures.record_sit_options import (
    ATOL,
    LIKELIHOOD_RUNS,
    LOSS_RUNS,
    ODE_RUNS,
    RTOL,
    SDE_RUNS,
    SOURCE,
    StandIn,
    inputs,
)

from diffusion.sit_samplers import bits_per_dim, ode_likelihood, sample_ode, sample_sde
from diffusion.sit_transport import create_transport, prior_logp

REF = torch.load(Path(__file__).parent / "fixtures" / "sit_options_reference.pt")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
SDE_SEED = 200 + len(LOSS_RUNS)
ODE_SEED = SDE_SEED + len(SDE_RUNS)
LIKELIHOOD_SEED = ODE_SEED + len(ODE_RUNS)


def test_reference_names_its_source():
    assert REF["source"] == SOURCE and "947f95b" in SOURCE


@pytest.mark.parametrize("index", range(len(LOSS_RUNS)), ids=lambda i: "-".join(map(str, LOSS_RUNS[i])))
def test_training_losses_match_sit(index):
    path, prediction, weight = LOSS_RUNS[index]
    x, y = inputs()
    torch.manual_seed(200 + index)
    loss = create_transport(path, prediction, weight).training_losses(StandIn(path, prediction), x, dict(y=y))["loss"]
    torch.testing.assert_close(loss, REF["losses"][index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", range(len(SDE_RUNS)), ids=lambda i: "-".join(map(str, SDE_RUNS[i])))
def test_sde_trajectories_match_sit(index):
    path, prediction, method, form, last, steps = SDE_RUNS[index]
    x, y = inputs()
    torch.manual_seed(SDE_SEED + index)
    states = sample_sde(create_transport(path, prediction), StandIn(path, prediction), torch.randn_like(x),
                        sampling_method=method, diffusion_form=form, last_step_kind=last, last_step_size=0.04,
                        num_steps=steps, y=y)
    assert len(states) == steps
    torch.testing.assert_close(torch.stack(states), REF["sde"][index], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", range(len(ODE_RUNS)), ids=lambda i: "-".join(map(str, ODE_RUNS[i])))
def test_ode_trajectories_match_sit(index):
    path, prediction, method, reverse, steps = ODE_RUNS[index]
    x, y = inputs()
    torch.manual_seed(ODE_SEED + index)
    start = x if reverse else torch.randn_like(x)
    states = sample_ode(create_transport(path, prediction), StandIn(path, prediction), start, sampling_method=method,
                        num_steps=steps, atol=ATOL, rtol=RTOL, reverse=reverse, y=y)
    tol = 10 * RTOL if method in ADAPTIVE else 1e-5
    torch.testing.assert_close(states, REF["ode"][index], rtol=tol, atol=tol)


@pytest.mark.parametrize("index", range(len(LIKELIHOOD_RUNS)), ids=lambda i: "-".join(map(str, LIKELIHOOD_RUNS[i])))
def test_ode_likelihood_matches_sit(index):
    path, prediction, method, steps = LIKELIHOOD_RUNS[index]
    x, y = inputs()
    torch.manual_seed(LIKELIHOOD_SEED + index)
    logp, noise = ode_likelihood(create_transport(path, prediction), StandIn(path, prediction), x,
                                 sampling_method=method, num_steps=steps, atol=ATOL, rtol=RTOL, y=y)
    ref_logp, ref_noise = REF["likelihood"][index]
    tol = 10 * RTOL if method in ADAPTIVE else 1e-5
    torch.testing.assert_close(noise, ref_noise, rtol=tol, atol=tol)
    torch.testing.assert_close(logp, ref_logp, rtol=tol, atol=tol)


def test_prior_and_bits_per_dim_are_the_closed_forms():
    z = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(prior_logp(z), torch.full((2,), -48 / 2 * math.log(2 * math.pi)))
    logp = torch.tensor([-48 * math.log(2.0)])
    assert torch.allclose(bits_per_dim(logp, 48), torch.tensor([1.0]))


def test_sit_eps_defaults():
    """SiT's create_transport: VP trains on [1e-5, 1 - 1e-5] and samples up to 1 - 1e-3; score and noise on the
    Linear and GVP paths keep 1e-3 from both ends; velocity there uses [0, 1] whatever the flags say."""
    vp = create_transport("VP")
    assert (vp.train_eps, vp.sample_eps) == (1e-5, 1e-3) and vp.interval() == (0.0, 1 - 1e-5)
    assert create_transport("GVP", "noise").interval(eval=True) == (1e-3, 1 - 1e-3)
    assert create_transport("Linear", "velocity", train_eps=0.1, sample_eps=0.1).interval(eval=True) == (0.0, 1.0)
    assert create_transport("Linear", "score", train_eps=0.01).sample_eps == 1e-3  # SiT leaves it undefined
    sde = dict(sde=True, eval=True, last_step_size=0.04)
    assert create_transport("Linear").interval(diffusion_form="sigma", **sde) == (0.0, 0.96)
    assert create_transport("Linear").interval(**sde)[0] == 1e-3  # SBDM's g is infinite at t=0; SiT starts there
    assert create_transport("Linear").interval(eval=True, reverse=True) == (1.0, 0.0)


@pytest.mark.parametrize("flags,needle", [
    (dict(path_type="Cosine"), "Linear, GVP, VP"), (dict(prediction="eps"), "velocity, score, noise"),
    (dict(loss_weight="uniform"), "--loss-weight"),
])
def test_unknown_options_are_refused_in_one_line(flags, needle):
    with pytest.raises(ValueError, match=needle):
        create_transport(**flags)


def test_unknown_solvers_and_steps_are_refused_in_one_line():
    x, y = inputs()
    transport, model = create_transport(), StandIn()
    with pytest.raises(ValueError, match="torchdiffeq's solvers"):
        sample_ode(transport, model, x, sampling_method="dopri9", num_steps=3, y=y)
    with pytest.raises(ValueError, match="Euler or Heun"):
        sample_sde(transport, model, x, sampling_method="RK4", num_steps=3, y=y)
    with pytest.raises(ValueError, match="--last-step"):
        sample_sde(transport, model, x, last_step_kind="Heun", num_steps=3, y=y)
