"""SiT's own time convention (t = 1 data, u = data - noise) read in REPA's: the released SiT samples and trains
as the original code does (fixtures from willisma/SiT, tests/fixtures/record_sit_transport.py), checkpoints say
which convention they hold, and DMD2 reads such a teacher's x0 in its own terms."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusion.pipeline import generate
from loss.denoising import InterpolantObjective
from models import create_model
from models.pretrained import build_for_sampling, resolve_sampling_config

REF = torch.load(Path(__file__).parent / "fixtures" / "sit_transport_reference.pt")
LATENTS = SimpleNamespace(downsample=8, latent_channels=4)  # the codec's shape, for 8x8x4 latents of 64 px


def resolve(path: Path, **flags):
    args = argparse.Namespace(ckpt=str(path), model="SiT-Ti/2", image_size=64, num_classes=10, vae="none",
                              default_vae="ema", path_type=None, projector_embed_dims=None, cls=None, legacy=False,
                              encoder_depth=None)
    for key, value in flags.items():
        setattr(args, key, value)
    return resolve_sampling_config(args)


def released(tmp_path) -> torch.nn.Module:
    """The fixture's SiT as the SiT release is stored: a raw state dict with the learned-sigma half."""
    path = tmp_path / "SiT-Ti-2-release.pt"
    torch.save(REF["state_dict"], path)
    state_dict, cfg = resolve(path)
    assert cfg["model_kwargs"]["time_convention"] == "sit" and cfg["path_type"] == "linear"
    return build_for_sampling(state_dict, cfg, LATENTS, "cpu")


def in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64, its float32 time embedding cast to it, as the fixture ran SiT's: a guided float32
    trajectory amplifies the CPU kernels' rounding (SiT's own code lands 8.8e-4 apart on AVX2 and AVX512)."""
    model.double().t_embedder.mlp.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    return model


def twins(**kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same random weights read in REPA's time and in SiT's."""
    torch.manual_seed(0)
    repa = create_model("SiT-Ti/2", input_size=8, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        for p in repa.parameters():
            p.normal_(0, 0.2)
    sit = create_model("SiT-Ti/2", input_size=8, num_classes=10, time_convention="sit", **kwargs).eval()
    sit.load_state_dict(repa.state_dict())
    return repa, sit


def test_sit_time_is_the_same_field_in_repa_time():
    """forward(x, t) = -u(x, 1 - t) for the latents and REG's class token; the projector features are the
    network's own; three guided channels as SiT's forward_with_cfg; unknown conventions refused."""
    repa, sit = twins(z_dims=[8], cls_token_dim=8)
    x, t, y, cls = torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.93]), torch.tensor([1, 2, 10]), torch.randn(3, 8)
    with torch.no_grad():
        v, zs, v_cls = sit(x, t, y, cls_token=cls)
        u, zs_raw, u_cls = repa(x, 1 - t, y, cls_token=cls)
    torch.testing.assert_close(v, -u)
    torch.testing.assert_close(v_cls, -u_cls)
    torch.testing.assert_close(zs[0], zs_raw[0])
    assert sit.guided_channels == 3 and getattr(repa, "guided_channels", None) is None
    assert sit.state_dict().keys() == repa.state_dict().keys()
    with pytest.raises(ValueError, match="unknown time_convention 'edm'; use one of repa, sit"):
        create_model("SiT-Ti/2", input_size=8, time_convention="edm")


@pytest.mark.parametrize("cfg_scale", [1.0, REF["cfg_scale"]])
def test_the_sit_release_samples_as_sits_own_ode(tmp_path, cfg_scale):
    """SiT's Sampler.sample_ode(euler) over linspace(0, 1, 9), with forward_with_cfg when guided, against our
    ODE sampler with eight steps on the same raw state dict."""
    model = in_float64(released(tmp_path))
    with torch.no_grad():
        out = generate(model, REF["z"].double(), REF["y"], sampler="ode", num_steps=REF["ode_steps"] - 1,
                       cfg_scale=cfg_scale, num_classes=10, path_type="linear")
    # guiding all four channels instead of SiT's three is off by ~7
    torch.testing.assert_close(out, REF["ode64" if cfg_scale == 1.0 else "ode_cfg64"], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("sit_path, path_type", [("Linear", "linear"), ("GVP", "cosine")])
def test_training_the_repa_time_model_is_sits_own_loss(tmp_path, sit_path, path_type):
    """REPA's velocity loss on the model at REPA time 1 - t equals SiT's Transport.training_losses at t, noise."""
    model = released(tmp_path)
    ref = REF[f"loss_{sit_path}"]
    t = (1 - ref["t"]).view(-1, 1, 1, 1)
    with torch.no_grad():
        loss = InterpolantObjective(path_type, proj_coeff=0.0)(model, REF["x1"], REF["y"], t=t, noise=ref["noise"])
    torch.testing.assert_close(loss["denoise"], ref["loss"].mean(), atol=1e-5, rtol=1e-5)


def test_checkpoints_say_which_time_they_hold(tmp_path):
    """Raw REPA weights (projectors, no learned-sigma half) and our checkpoints are REPA's time; SiT's train.py
    checkpoints (its capitalised --path-type) are SiT's, GVP as the cosine path; what train_dmd2.py records
    wins; SiT's VP path and score / noise targets record SiT's transport, which only SiT's samplers read."""
    plain = create_model("SiT-Ti/2", input_size=8, num_classes=10, z_dims=[8]).state_dict()
    sigma = create_model("SiT-Ti/2", input_size=8, num_classes=10, learn_sigma=True).state_dict()
    path = tmp_path / "c.pt"

    def convention(ckpt, **flags):
        torch.save(ckpt, path)
        _, cfg = resolve(path, **flags)
        return cfg["model_kwargs"]["time_convention"], cfg["path_type"]

    assert convention(plain) == ("repa", "linear")
    assert convention({"ema": sigma, "args": {"model": "SiT-Ti/2", "path_type": "cosine"}}) == ("repa", "cosine")
    sit_args = argparse.Namespace(model="SiT-Ti/2", path_type="GVP", prediction="velocity", image_size=64,
                                  num_classes=10, vae="ema")
    assert convention({"model": sigma, "ema": sigma, "opt": {}, "args": sit_args}) == ("sit", "cosine")
    assert convention({"model": sigma, "ema": sigma, "opt": {}, "args": sit_args}, path_type="linear") \
        == ("sit", "linear")
    recorded = {"model": plain, "args": {"model": "SiT-Ti/2", "path_type": "linear"},
                "model_kwargs": {"time_convention": "sit"}}
    assert convention(recorded) == ("sit", "linear")
    for field, value in [("path_type", "VP"), ("prediction", "noise")]:
        args = argparse.Namespace(**{**vars(sit_args), field: value})
        torch.save({"ema": sigma, "args": args}, path)
        _, cfg = resolve(path)
        transport = cfg["model_kwargs"]["transport"]
        assert cfg["model_kwargs"]["time_convention"] == "sit" and transport[field] == value
        assert transport["sample_eps"] == 1e-3  # SiT's default for VP and for score / noise targets


def test_dmd2_reads_a_sit_time_teacher_in_its_own_terms():
    """A teacher in SiT's time: x0 = x_t + (1 - tau) u(x_t, tau) at its own tau = 1 - t (linear path), the
    same network in REPA's time giving u; the fake score's objective is its own loss (tested above)."""
    from methods.dmd2_teacher import FlowTeacher

    raw, sit = twins(learn_sigma=True)
    teacher = FlowTeacher(sit, "linear", None)
    sigma = torch.tensor([0.3, 2.0, 40.0], dtype=torch.float64)
    x_vp, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 3, 9])
    t = sigma / (1 + sigma)  # REPA's time of sigma on the linear path
    x_t = x_vp.double() * (torch.sqrt(1 + sigma**2) / (1 + sigma)).view(-1, 1, 1, 1)  # (x0 + sigma eps) / (1 + sigma)
    with torch.no_grad():
        x0 = teacher.x0(sit, x_vp, sigma, y)
        tau = (1 - t).float()
        u = raw(x_t.float(), tau, y)[0].double()
    expected = x_t + t.view(-1, 1, 1, 1) * u
    torch.testing.assert_close(x0, expected, atol=1e-4, rtol=1e-4)  # times rounded to float32 on either side


def test_sampling_scripts_take_sits_path_names(capsys):
    """--path-type in SiT's spelling: Linear and GVP are the linear and cosine paths; VP is refused by argparse."""
    import generate
    import sample

    assert sample.parse_args(["--path-type", "GVP"]).path_type == "cosine"
    assert generate.parse_args(["--ckpt", "c.pt", "--path-type", "Linear"]).path_type == "linear"
    assert sample.parse_args(["--path-type", "cosine"]).path_type == "cosine"
    with pytest.raises(SystemExit):
        sample.parse_args(["--path-type", "VP"])
    assert "invalid choice: 'VP'" in capsys.readouterr().err


@pytest.mark.parametrize("cfg_scale", [1.0, REF["cfg_scale"]])
def test_sits_ode_mode_samples_the_release_as_sit_does(tmp_path, cfg_scale):
    """sample.py ODE's sampler (SiT's transport, the batch doubled for guidance as SiT's forward_with_cfg) on the
    raw release against SiT's own euler ODE over linspace(0, 1, 9)."""
    from diffusion.pipeline import generate_sit
    from diffusion.sit_transport import create_transport

    model = in_float64(released(tmp_path))
    with torch.no_grad():
        out = generate_sit(model, REF["z"].double(), REF["y"], mode="ODE", transport=create_transport("Linear"),
                           num_steps=REF["ode_steps"], cfg_scale=cfg_scale, num_classes=10, sampling_method="euler")
    torch.testing.assert_close(out, REF["ode64" if cfg_scale == 1.0 else "ode_cfg64"], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("seed, sit_path", [(0, "Linear"), (1, "GVP")])
def test_sits_own_objective_is_sits_training_loss(tmp_path, seed, sit_path):
    """train.py --path-type Linear|GVP (SiT's transport, loss.denoising.SiTObjective) on the release: SiT's
    Transport.training_losses with the same seed, so the same noise and times."""
    from diffusion.sit_transport import create_transport
    from loss.denoising import SiTObjective

    model = released(tmp_path)
    torch.manual_seed(seed)
    with torch.no_grad():
        loss = SiTObjective(create_transport(sit_path))(model, REF["x1"], REF["y"])["loss"]
    torch.testing.assert_close(loss, REF[f"loss_{sit_path}"]["loss"].mean(), atol=1e-5, rtol=1e-5)
