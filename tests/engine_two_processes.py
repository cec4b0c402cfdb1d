"""Run by tests/test_engine.py under torch.distributed.run with two gloo processes: a NaN loss on rank 1
only stops both processes' updates, and both stop naming the same step."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine import BATCH, ToyGAN, points  # noqa: E402

from training.data import make_loader  # noqa: E402
from training.engine import Engine, NonFiniteLoss  # noqa: E402
from training.setup import setup_accelerator  # noqa: E402

accelerator = setup_accelerator()
rank = accelerator.process_index
method = ToyGAN(nan_at=3 if rank == 1 else None)
engine = Engine(accelerator, method)
engine.init_emas()
loader, sampler = make_loader(points(), BATCH, 2, rank, seed=0, num_workers=0)
seen = {}


def snapshot(step):
    seen[step] = [p.detach().clone() for p in engine.module("discriminator").parameters()]


try:
    engine.train(engine.batches(loader, sampler, BATCH), 6, log_every=4, log=lambda rec: None, every={1: [snapshot]},
                 global_batch=2 * BATCH)
    print(f"rank {rank}: no stop")
except NonFiniteLoss as stop:
    final = [p.detach() for p in engine.module("discriminator").parameters()]
    unchanged = all(torch.equal(a, b) for a, b in zip(final, seen[2]))
    print(f"rank {rank}: stopped ({stop}); updates after step 2: {'none' if unchanged else 'applied'}")
