"""Run by tests/test_engine.py under torch.distributed.run with two gloo processes.

  nan:   a NaN loss on rank 1 only stops both processes' updates, and both stop naming the same step.
  shard: FSDP2 sharding (``Engine(shard=True)``) trains as DDP does, and resumes exactly.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine import BATCH, ToyGAN, points  # noqa: E402

from common.setup import setup_accelerator  # noqa: E402
from training.data import make_loader  # noqa: E402
from training.engine import Engine, NonFiniteLoss  # noqa: E402

accelerator = setup_accelerator()
rank = accelerator.process_index


def build(shard=False, state=None, **kw) -> Engine:
    torch.manual_seed(123 + rank)
    engine = Engine(accelerator, ToyGAN(**kw), shard=shard)
    if state is None:
        engine.init_emas()
    else:
        engine.load_state_dict(state)
    return engine


def run(engine: Engine, until: int, every=None) -> Engine:
    loader, sampler = make_loader(points(), BATCH, 2, rank, seed=0, num_workers=0)
    engine.train(engine.batches(loader, sampler, BATCH), until, log_every=4, log=lambda rec: None,
                 every=every or {}, global_batch=2 * BATCH)
    return engine


def discriminator(engine: Engine) -> list:
    return [p.detach().clone() for p in engine.module("discriminator").parameters()]


def nan():
    engine, seen = build(nan_at=3 if rank == 1 else None), {}
    try:
        run(engine, 6, every={1: [lambda step: seen.__setitem__(step, discriminator(engine))]})
        print(f"rank {rank}: no stop")
    except NonFiniteLoss as stop:
        unchanged = all(torch.equal(a, b) for a, b in zip(discriminator(engine), seen[2]))
        print(f"rank {rank}: stopped ({stop}); updates after step 2: {'none' if unchanged else 'applied'}")


def shard():
    ddp = run(build(), 4).state_dict({})
    sharded = run(build(shard=True), 4)
    local = next(sharded.module("generator").parameters())
    assert type(local).__name__ == "DTensor" and local.to_local().shape[0] == 8  # 16 rows over 2 processes
    straight = sharded.state_dict({})
    path = Path(sys.argv[2]) / "0000002.pt"
    run(build(shard=True), 2).save(path, {})  # full state dicts, written by the main process
    resumed = run(build(shard=True, state=torch.load(path, weights_only=False)), 4).state_dict({})
    if rank == 0:
        for key in ("generator", "discriminator", "ema_gen"):
            for name, value in straight[key].items():
                assert torch.allclose(value, ddp[key][name], atol=1e-6), ("ddp", key, name)
                assert torch.equal(value, resumed[key][name]), ("resume", key, name)
        assert resumed["gen_updates"] == straight["gen_updates"] == 2
        print("shard: as DDP, resumed exactly")


{"nan": nan, "shard": shard}[sys.argv[1]]()
if torch.distributed.is_initialized():  # join gloo's threads before exit (an abort at exit otherwise, now and then)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
