"""Runs training entry points with every random draw of a training step keyed by global sample index, so
that a run on several processes can be compared with the same run on one.

Inside a training step, ``torch.rand / randn / randint / rand_like / randn_like`` and dropout are replaced:
a draw whose first dimension is the micro-batch (or k micro-batches stacked, such as fake and real images
in one call) gives row ``i`` of process ``rank`` the values of the global sample at position
``micro * world * local + rank + world * i`` of the step (the order in which ``DistributedSampler`` deals a
step's samples out), from a generator seeded by (step, call, block, position);
any other draw (one per batch, e.g. DMD2's backward-simulation step) comes from (step, micro-batch, call)
and is the same on every process. Outside the steps (initialisation, sample grids) nothing changes, so
the scripts keep their own seeding (``seed * world + rank``).

  python -m torch.distributed.run --standalone --nproc_per_node=2 tests/equivalence.py CASES.json OUT

runs every case of CASES.json (``{name: {"script": "train", "argv": [...]}}``) one after another in the
same two processes, each into ``OUT/name``; ``tests/test_equivalence.py`` runs the one-process side in
its own process with ``run_case`` and compares the checkpoints.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.engine import Engine  # noqa: E402

ORIGINAL = {"rand": torch.rand, "randn": torch.randn, "randint": torch.randint, "rand_like": torch.rand_like,
            "randn_like": torch.randn_like, "dropout": F.dropout}


def _size(args, kwargs) -> tuple[int, ...]:
    size = kwargs.pop("size", None)
    if size is None:
        size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
    return tuple(int(s) for s in size)


class KeyedDraws:
    """The replacements (see the module docstring); ``step(engine, local)`` opens one micro-batch's scope."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.active = rank, world, False

    @contextlib.contextmanager
    def scope(self, step: int, micro: int, local: int):
        self.step, self.micro, self.local, self.calls, self.active = step, micro, local, itertools.count(), True
        try:
            yield
        finally:
            self.active = False

    def generator(self, *key: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash(key) % 2**63)

    def draw(self, shape: tuple[int, ...], make, device) -> torch.Tensor:
        call = next(self.calls)
        if shape and shape[0] and shape[0] % self.local == 0:  # k stacked micro-batches (e.g. fake and real)
            first = self.micro * self.world * self.local + self.rank
            rows = [make(shape[1:], self.generator(self.step, call, j // self.local,
                                                   first + self.world * (j % self.local))) for j in range(shape[0])]
            out = torch.stack(rows)
        else:
            out = make(shape, self.generator(self.step, self.micro, call, -1))
        return out.to(device)

    # ----- torch's functions, keyed while a scope is open -----
    def rand(self, *args, generator=None, dtype=None, device=None, **kwargs):
        if not self.active or generator is not None:
            return ORIGINAL["rand"](*args, generator=generator, dtype=dtype, device=device, **kwargs)
        dtype = dtype or torch.get_default_dtype()
        return self.draw(_size(args, kwargs), lambda s, g: ORIGINAL["rand"](s, generator=g, dtype=dtype), device)

    def randn(self, *args, generator=None, dtype=None, device=None, **kwargs):
        if not self.active or generator is not None:
            return ORIGINAL["randn"](*args, generator=generator, dtype=dtype, device=device, **kwargs)
        dtype = dtype or torch.get_default_dtype()
        return self.draw(_size(args, kwargs), lambda s, g: ORIGINAL["randn"](s, generator=g, dtype=dtype), device)

    def randint(self, *args, generator=None, dtype=None, device=None, **kwargs):
        if not self.active or generator is not None:
            return ORIGINAL["randint"](*args, generator=generator, dtype=dtype, device=device, **kwargs)
        if "size" in kwargs:
            bounds, size = args, kwargs.pop("size")
        else:
            bounds, size = args[:-1], args[-1]
        low, high = (0, bounds[0]) if len(bounds) == 1 else bounds
        dtype = dtype or torch.int64
        return self.draw(tuple(size), lambda s, g: ORIGINAL["randint"](low, high, s, generator=g, dtype=dtype),
                         device)

    def rand_like(self, x, *, dtype=None, device=None, **kwargs):
        if not self.active:
            return ORIGINAL["rand_like"](x, dtype=dtype, device=device, **kwargs)
        return self.rand(x.shape, dtype=dtype or x.dtype, device=device or x.device)

    def randn_like(self, x, *, dtype=None, device=None, **kwargs):
        if not self.active:
            return ORIGINAL["randn_like"](x, dtype=dtype, device=device, **kwargs)
        return self.randn(x.shape, dtype=dtype or x.dtype, device=device or x.device)

    def dropout(self, x, p: float = 0.5, training: bool = True, inplace: bool = False):
        if not self.active or not training or p == 0:
            return ORIGINAL["dropout"](x, p, training, inplace)
        keep = self.rand(x.shape, dtype=x.dtype, device=x.device) >= p
        return x * keep / (1 - p)


def local_batch(method, batch) -> int:
    """The micro-batch size: the first tensor of the loader's batch, else the method's own (DMD2 without data)."""
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else [batch]
    for item in items:
        if torch.is_tensor(item):
            return len(item)
    return method.batch_size


@contextlib.contextmanager
def keyed_draws(rank: int, world: int):
    """Install the keyed draws for every ``Engine`` step while the context is open."""
    draws, one_step = KeyedDraws(rank, world), Engine.one_step

    def keyed_one_step(engine, batches):
        method, micro = engine.method, itertools.count()
        inner = method.train_step

        def step(engine_, batch):
            with draws.scope(engine_.steps, next(micro), local_batch(method, batch)):
                return inner(engine_, batch)

        method.train_step = step
        try:
            return one_step(engine, batches)
        finally:
            method.train_step = inner

    replaced = {(torch, name): getattr(draws, name) for name in ORIGINAL if name != "dropout"}
    replaced[(F, "dropout")] = draws.dropout
    replaced[(Engine, "one_step")] = keyed_one_step
    saved = {target: getattr(*target) for target in replaced}
    for (owner, name), value in replaced.items():
        setattr(owner, name, value)
    try:
        yield draws
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


@contextlib.contextmanager
def initial_state(path: Path):
    """Save every module's state when a fresh run starts training (the weights before step 1)."""
    train = Engine.train

    def recording(engine, *args, **kwargs):
        if engine.steps == 0:
            torch.save({key: {k: v.detach().cpu().clone() for k, v in
                              engine.method.export_weights(key, engine.module(key).state_dict()).items()}
                        for key in engine.method.modules}, path)
        return train(engine, *args, **kwargs)

    Engine.train = recording
    try:
        yield
    finally:
        Engine.train = train


def run_case(case: dict, out: Path, rank: int = 0, world: int = 1) -> None:
    """One entry point's ``main`` on ``case['argv']`` (with ``case['argv_world'][str(world)]`` appended),
    writing into ``out``; on one process the initial weights go to ``out/initial.pt``."""
    script = importlib.import_module(case["script"])
    argv = [*case["argv"], *case.get("argv_world", {}).get(str(world), [])]
    argv = [str(out) if a == "{out}" else a for a in argv]
    record = initial_state(out / "initial.pt") if world == 1 else contextlib.nullcontext()
    out.mkdir(parents=True, exist_ok=True)
    with keyed_draws(rank, world), record:
        script.main(script.parse_args(argv))


def main() -> None:
    from accelerate import Accelerator, PartialState

    from training import visual

    visual.GRID_STEPS = 2  # the runs' sample grids: 2 Euler steps (what they show is not compared)
    cases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    state = PartialState(cpu=not torch.cuda.is_available())
    # every case runs in these processes: keep the process group past each script's end_training
    Accelerator.end_training = lambda self: [tracker.finish() for tracker in self.trackers]
    for name in sys.argv[3:] or cases:
        run_case(cases[name], out / name, state.process_index, state.num_processes)
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
