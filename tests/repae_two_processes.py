"""Run by tests/test_train_repae.py under torch.distributed.run with two gloo processes: after REPA-E steps
on different data per process, every process holds the same SiT, VAE and discriminator (DDP reduced the
gradients of all three updates) and the processes saw different batches.

  python -m torch.distributed.run --standalone --nproc_per_node=2 tests/repae_two_processes.py VAE_CKPT
"""

import sys
from pathlib import Path

from accelerate.utils import gather_object

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_repae  # noqa: E402
from training.data import make_loader  # noqa: E402
from training.engine import Engine  # noqa: E402
from training.repae_recipe import build_method, open_dataset, validate  # noqa: E402
from training.setup import seed_everything, setup_accelerator  # noqa: E402

args = train_repae.parse_args([
    "--exp-name", "x", "--dataset", "builtin", "--num-classes", "10", "--resolution", "32", "--model", "SiT-Ti/1",
    "--vae", "tiny-f4d4", "--vae-ckpt", sys.argv[1], "--enc-type", "tiny-vit", "--encoder-depth", "1",
    "--batch-size", "8", "--no-compile", "--mixed-precision", "no", "--report-to", "none", "--lpips-random"])
validate(args)
accelerator = setup_accelerator()
rank = accelerator.process_index
seed_everything(rank)
dataset = open_dataset(args)
method = build_method(args, dataset, accelerator.device)
engine = Engine(accelerator, method)
engine.init_emas()
loader, sampler = make_loader(dataset, 4, 2, rank, 0, 0)
seen = []
step = method.train_step


def recording(engine, batch):
    seen.append(float(batch[0].float().sum()))
    return step(engine, batch)


method.train_step = recording
engine.train(engine.batches(loader, sampler, 4), 3, log_every=3, log=lambda rec: None, every={}, global_batch=8)
sums = {key: sum(float(p.double().sum()) for p in engine.module(key).parameters()) for key in method.modules}
everyone = gather_object([(sums, seen)])
if rank == 0:
    (a, seen_a), (b, seen_b) = everyone
    assert a == b, f"the processes' weights differ: {a} vs {b}"
    assert seen_a != seen_b, "both processes trained on the same batches"
    print("repae: the same weights on both processes")
