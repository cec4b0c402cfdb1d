"""Parity with the original DiT diffusion code (facebookresearch/DiT @ ed81ce2, diffusion/).

The reference values in tests/fixtures/dit_diffusion_reference.pt were computed by that
code with tests/fixtures/record_dit_diffusion.py (see its docstring to re-record). The
model, the cond_fn and the inputs below are defined identically there. The samplers run
under the same ``torch.manual_seed`` as the recording, so matching them also proves that
random numbers are drawn in the same order and shapes as in the original.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures.record_dit_diffusion import TinyModel, cond_fn  # the recorder's own stand-in model: no drift

from diffusion import create_diffusion, space_timesteps

FIXTURE = Path(__file__).parent / "fixtures" / "dit_diffusion_reference.pt"
SOURCE = "facebookresearch/DiT @ ed81ce2, diffusion/"
ATOL, RTOL = 2e-5, 1e-5  # bit-exact on the recording machine; other CPUs sum float32 in another order (5e-6)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_fixture_names_its_source(ref):
    assert ref["meta"]["source"] == SOURCE


@pytest.mark.parametrize(
    "name, kwargs, learn_sigma, t",
    [
        ("linear", {}, True, None),
        ("cosine", {"noise_schedule": "squaredcos_cap_v2"}, True, None),
        ("respaced250_rescaled", {"rescale_learned_sigmas": True}, True, [0, 1, 125, 249]),
        ("kl", {"use_kl": True}, True, None),
        ("fixed_xstart", {"learn_sigma": False, "predict_xstart": True}, False, None),
        ("noise_drawn", {}, True, None),
    ],
)
def test_training_losses_and_gradients_match_original(ref, name, kwargs, learn_sigma, t):
    respacing = "250" if name == "respaced250_rescaled" else ""
    diffusion = create_diffusion(respacing, **kwargs)
    model = TinyModel(learn_sigma)
    t = ref["input/t"] if t is None else torch.tensor(t)
    noise = None if name == "noise_drawn" else ref["input/noise"]
    torch.manual_seed(7)  # only consumed when noise is None
    terms = diffusion.training_losses(
        model, ref["input/x_start"], t, model_kwargs={"y": ref["input/y"]}, noise=noise
    )
    terms["loss"].sum().backward()
    expected = {k.rsplit("/", 1)[1]: v for k, v in ref.items() if k.startswith(f"train/{name}/")}
    assert set(terms) == set(expected) - {"grad_weight", "grad_bias"}
    for k, v in terms.items():
        close(v, expected[k])
    close(model.weight.grad, expected["grad_weight"])
    close(model.bias.grad, expected["grad_bias"])


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("learned_range", {}),
        ("fixed_large", {"learn_sigma": False}),
        ("fixed_small", {"learn_sigma": False, "sigma_small": True}),
    ],
)
def test_p_mean_variance_matches_original(ref, name, kwargs):
    diffusion = create_diffusion("", **kwargs)
    x_t = diffusion.q_sample(ref["input/x_start"], ref["input/t"], noise=ref["input/noise"])
    out = diffusion.p_mean_variance(
        TinyModel(name == "learned_range"), x_t, ref["input/t"], model_kwargs={"y": ref["input/y"]}
    )
    for k in ("mean", "log_variance", "pred_xstart"):
        close(out[k], ref[f"pmv/{name}/{k}"])


SAMPLE_RUNS = {  # name: (respacing, create_diffusion kwargs, loop, loop kwargs); order = recorded seed
    "p10": ("10", {}, "p_sample_loop", {"clip_denoised": False}),
    "p10_clip": ("10", {}, "p_sample_loop", {"clip_denoised": True}),
    "p10_noise_drawn": ("10", {}, "p_sample_loop", {"clip_denoised": False, "noise": None}),
    "p10_fixed_large": ("10", {"learn_sigma": False}, "p_sample_loop", {"clip_denoised": False}),
    "p10_fixed_small": (
        "10",
        {"learn_sigma": False, "sigma_small": True},
        "p_sample_loop",
        {"clip_denoised": False},
    ),
    "p10_cond_fn": ("10", {}, "p_sample_loop", {"clip_denoised": False, "cond_fn": cond_fn}),
    "ddim10_eta0": ("ddim10", {}, "ddim_sample_loop", {"clip_denoised": False, "eta": 0.0}),
    "ddim10_eta0_clip": ("ddim10", {}, "ddim_sample_loop", {"clip_denoised": True, "eta": 0.0}),
    "ddim10_eta0.5": ("ddim10", {}, "ddim_sample_loop", {"clip_denoised": False, "eta": 0.5}),
    "ddim10_eta0.5_clip": ("ddim10", {}, "ddim_sample_loop", {"clip_denoised": True, "eta": 0.5}),
    "ddim10_cond_fn": (
        "ddim10",
        {},
        "ddim_sample_loop",
        {"clip_denoised": False, "eta": 0.5, "cond_fn": cond_fn},
    ),
}


@pytest.mark.parametrize("name", list(SAMPLE_RUNS))
def test_sampler_matches_original_under_same_seed(ref, name):
    respacing, kwargs, loop, extra = SAMPLE_RUNS[name]
    diffusion = create_diffusion(respacing, **kwargs)
    model = TinyModel(kwargs.get("learn_sigma", True))
    x_T = ref["input/x_T"]
    args = {"noise": x_T, "model_kwargs": {"y": ref["input/y_sample"]}, "device": "cpu", **extra}
    torch.manual_seed(100 + list(SAMPLE_RUNS).index(name))
    close(getattr(diffusion, loop)(model, tuple(x_T.shape), **args), ref[f"sample/{name}"])
    # same number of random draws, so a seeded multi-batch run (sample_ddp.py) continues identically
    assert torch.equal(torch.randn(3), ref[f"sample/{name}/rng_after"])


def test_progressive_sampler_matches_original_at_every_step(ref):
    x_T = ref["input/x_T"]
    torch.manual_seed(99)
    steps = list(
        create_diffusion("10").p_sample_loop_progressive(
            TinyModel(),
            tuple(x_T.shape),
            noise=x_T,
            clip_denoised=False,
            model_kwargs={"y": ref["input/y_sample"]},
        )
    )
    close(torch.stack([s["sample"] for s in steps]), ref["sample/p10_progressive"])


def test_calc_bpd_loop_matches_original(ref):
    torch.manual_seed(5)
    out = create_diffusion("10").calc_bpd_loop(
        TinyModel(), ref["input/x_start"], clip_denoised=True, model_kwargs={"y": ref["input/y"]}
    )
    for k, v in out.items():
        close(v, ref[f"bpd/{k}"])


def test_respacing_and_betas_match_original(ref):
    for key, expected in ref.items():
        if key.startswith("space_timesteps/"):
            assert sorted(space_timesteps(1000, key.split("/", 1)[1])) == expected.tolist(), key
    torch.testing.assert_close(
        torch.from_numpy(create_diffusion("10").betas), ref["betas/linear_10"], atol=0, rtol=0
    )
    cosine = create_diffusion("10", noise_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(torch.from_numpy(cosine.betas), ref["betas/cosine_10"], atol=0, rtol=0)
