"""The training engine on a toy two-optimizer method: a tiny GAN on 2-D points.

It proves what REPA-E and DMD2 rely on: several networks and optimizers updated in the method's
own order and ratio, named EMAs, exact resume between any two steps, and the non-finite stop.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from common.setup import setup_accelerator
from training.data import make_loader
from training.engine import Engine, Method, NonFiniteLoss

STEPS, BATCH = 6, 8


class ToyGAN(Method):
    """Discriminator every step, generator every ``ratio``-th step (DMD2's two time-scale update)."""

    def __init__(self, ratio: int = 2, nan_at: int | None = None):
        torch.manual_seed(0)
        self.modules = {"generator": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)),
                        "discriminator": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))}
        self.optimizers = {name: torch.optim.AdamW(self.modules[module].parameters(), lr=1e-2, fused=True)
                           for name, module in (("opt_gen", "generator"), ("opt_disc", "discriminator"))}
        self.emas = {"ema_gen": ("generator", 0.5)}
        self.ratio, self.nan_at, self.gen_updates = ratio, nan_at, 0

    def train_step(self, engine, batch):
        (real,) = batch
        gen, disc = self.modules["generator"], self.modules["discriminator"]
        z = torch.randn(real.shape[0], 2)
        d_loss = F.softplus(disc(gen(z).detach())).mean() + F.softplus(-disc(real)).mean()
        if engine.steps + 1 == self.nan_at:
            d_loss = d_loss * float("nan")
        engine.backward(d_loss)
        engine.step("opt_disc")
        losses = {"loss": d_loss}
        if engine.steps % self.ratio == 0:
            engine.module("discriminator").requires_grad_(False)
            losses["gen"] = F.softplus(-disc(gen(z))).mean()
            engine.backward(losses["gen"])
            engine.step("opt_gen")
            engine.module("discriminator").requires_grad_(True)
            self.gen_updates += engine.syncing
        return losses

    def extra_state(self):
        return {"gen_updates": self.gen_updates}

    def load_extra_state(self, state):
        self.gen_updates = state["gen_updates"]


def points(n: int = 64) -> TensorDataset:
    return TensorDataset(torch.randn(n, 2, generator=torch.Generator().manual_seed(1)) * 0.3 + 2.0)


def run(until: int, state: dict | None = None, method: ToyGAN | None = None, after_step=None, **kw):
    """Train a fresh ToyGAN to step ``until`` (from ``state`` when given); returns the engine."""
    torch.manual_seed(123)
    accelerator = setup_accelerator()
    engine = Engine(accelerator, method or ToyGAN(**kw))
    if state is None:
        engine.init_emas()
    else:
        engine.load_state_dict(state)
    loader, sampler = make_loader(points(), BATCH, 1, 0, seed=0, num_workers=0)
    every = {1: [after_step]} if after_step else {}
    engine.train(engine.batches(loader, sampler, BATCH), until, log_every=100, log=lambda rec: None, every=every,
                 global_batch=BATCH)
    return engine


def weights(engine) -> dict:
    return {k: v.clone() for k, v in engine.state_dict({})["generator"].items()}


@pytest.mark.parametrize("stop", range(1, STEPS))
def test_resume_after_any_step_continues_identically(stop):
    straight = run(STEPS)
    first = run(stop)
    resumed = run(STEPS, state=first.state_dict({}))
    a, b = straight.state_dict({}), resumed.state_dict({})
    for key in ("generator", "discriminator", "ema_gen"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (stop, key, name)
    for key in ("opt_gen", "opt_disc"):
        assert all(torch.equal(a[key]["state"][i]["exp_avg"], b[key]["state"][i]["exp_avg"]) for i in a[key]["state"])
    assert a["gen_updates"] == b["gen_updates"] == 3 and a["data"] == b["data"]


def test_the_update_ratio_is_honoured_and_the_named_ema_follows():
    snapshots = []
    method = ToyGAN(ratio=3)

    def snapshot(step):
        snapshots.append({k: v.detach().clone() for k, v in method.modules["generator"].state_dict().items()})

    engine = run(STEPS, method=method, after_step=snapshot)
    moved = [not torch.equal(a["0.weight"], b["0.weight"]) for a, b in zip(snapshots, snapshots[1:])]
    assert moved == [False, False, True, False, False]  # updates at steps 1, 4 (engine.steps 0 and 3)
    assert method.gen_updates == 2
    ema, gen = engine.emas["ema_gen"].state_dict(), method.modules["generator"].state_dict()
    assert set(engine.state_dict({})) >= {"generator", "discriminator", "ema_gen", "opt_gen", "opt_disc", "rng"}
    assert not torch.equal(ema["0.weight"], gen["0.weight"])  # an average, not a copy


def test_no_update_after_a_non_finite_loss_and_the_stop_names_the_last_good_checkpoint(tmp_path):
    method = ToyGAN(nan_at=3)
    saved = {}

    def checkpoint(step):
        engine.save(tmp_path / f"{step:07d}.pt", {})
        saved[step] = {k: v.detach().clone() for k, v in method.modules["discriminator"].state_dict().items()}

    torch.manual_seed(123)
    engine = Engine(setup_accelerator(), method)
    engine.init_emas()
    loader, sampler = make_loader(points(), BATCH, 1, 0, seed=0, num_workers=0)
    with pytest.raises(NonFiniteLoss, match=r"non-finite at step 3; .* last good checkpoint is .*0000002.pt"):
        engine.train(engine.batches(loader, sampler, BATCH), STEPS, log_every=5, log=lambda rec: None,
                     every={1: [checkpoint]}, global_batch=BATCH)
    assert sorted(saved) == [1, 2]  # the step-3 checkpoint was refused
    for name, value in method.modules["discriminator"].state_dict().items():
        assert torch.equal(value, saved[2][name])  # step 3 applied nothing


@pytest.mark.multiprocess
def test_a_non_finite_loss_on_one_process_stops_every_process():
    from conftest import run_script

    proc = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                      "tests/engine_two_processes.py", "nan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: stopped (loss became non-finite at step 3;" in proc.stdout, proc.stdout
    assert proc.stdout.count("updates after step 2: none") == 2, proc.stdout


@pytest.mark.multiprocess
def test_sharded_training_matches_ddp_and_resumes_exactly(tmp_path):
    """FSDP2 over two gloo processes: the same weights as DDP, and a resume halfway equals the straight run."""
    from conftest import run_script

    proc = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                      "tests/engine_two_processes.py", "shard", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard: as DDP, resumed exactly" in proc.stdout


def test_a_loss_of_some_steps_is_logged_as_its_mean_over_those_steps():
    method, gen_losses, records = ToyGAN(ratio=3), [], []
    step = method.train_step

    def recording(engine, batch):
        losses = step(engine, batch)
        if "gen" in losses:
            gen_losses.append(losses["gen"].item())
        return losses

    method.train_step = recording
    torch.manual_seed(123)
    engine = Engine(setup_accelerator(), method)
    engine.init_emas()
    loader, sampler = make_loader(points(), BATCH, 1, 0, seed=0, num_workers=0)
    engine.train(engine.batches(loader, sampler, BATCH), STEPS, log_every=STEPS, log=records.append, every={},
                 global_batch=BATCH)
    assert len(gen_losses) == 2 and records[0]["gen"] == pytest.approx(sum(gen_losses) / 2)


class Slope(Method):
    """One weight vector ``w`` (4 entries, starting at 0) with loss ``c * sum(w)``: its gradient is ``c``
    everywhere, so plain SGD (learning rate 1) gives every update in closed form."""

    def __init__(self, slope: float = 1.0, max_grad_norm: float | None = None, decay: float = 0.25):
        net = nn.Linear(4, 1, bias=False)
        nn.init.zeros_(net.weight)
        self.modules, self.emas = {"model": net}, {"ema": ("model", decay)}
        self.optimizers = {"opt": torch.optim.SGD(net.parameters(), lr=1.0)}
        self.slope, self.max_grad_norm, self.norms = slope, max_grad_norm, []

    def train_step(self, engine, batch):
        loss = self.slope * self.modules["model"].weight.sum()
        engine.backward(loss)
        norm = engine.step("opt", self.max_grad_norm)
        if norm is not None:
            self.norms.append(float(norm))
        return {"loss": loss.detach()}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_ema_averages_the_weights_after_each_update(grad_accum):
    """``ema_k = d ema_(k-1) + (1 - d) w_k`` with ``w_k`` the weights after update k, once per step
    however many micro-batches it has: with w_k = -k and d = 0.25, -0.75, -1.6875, -2.671875."""
    method = Slope()
    engine = Engine(setup_accelerator(), method, grad_accum=grad_accum)
    engine.init_emas()
    emas = []
    for _ in range(3):
        engine.one_step(iter([None] * grad_accum))
        engine.steps += 1
        emas.append(engine.emas["ema"].weight[0, 0].item())
    assert method.modules["model"].weight[0, 0].item() == -3.0
    assert emas == [-0.75, -1.6875, -2.671875]


def test_clipping_scales_the_gradient_to_the_norm_and_returns_the_norm_before():
    """A gradient of 3 on 4 entries has norm 6; clipped to 1.5 each entry becomes 0.75 (SGD, rate 1)."""
    for max_norm, entry in ((1.5, 0.75), (100.0, 3.0)):
        method = Slope(slope=3.0, max_grad_norm=max_norm)
        engine = Engine(setup_accelerator(), method)
        engine.one_step(iter([None]))
        torch.testing.assert_close(method.modules["model"].weight, torch.full((1, 4), -entry))
        assert method.norms == [pytest.approx(6.0)]
