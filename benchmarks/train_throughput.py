"""Training throughput of any registered model: images/s, step time, peak memory and MFU.

  python benchmarks/train_throughput.py --model DiT-XL/2 --image-size 256 --batch-size 256 \\
      --micro-batch-size 64 --compare-precision
  python benchmarks/train_throughput.py --model DiT-S/2 --batch-size 8 --warmup 1 --steps 3 --mixed-precision bf16
  python benchmarks/train_throughput.py --model DiT-Ti/4 --image-size 32 --vae none --output bench.jsonl

Every timed step is train.py's own step on synthetic data (no VAE, no data loading): the DDPM
method's ``train_step`` (``methods/denoising.py``) on the training engine (``training/engine.py``),
which draws the latents from cached posterior moments as ``imagedata/latents.py`` does (pixel space: a
random flip), samples t, takes the DDPM loss of ``create_diffusion("")``, back-propagates, steps
the fused AdamW (lr 1e-4, no weight decay) and updates the EMA. ``--micro-batch-size`` splits the
batch into micro-batches whose gradients accumulate before the one optimizer step. Model FLOPs per
image come from ``training.throughput`` (one forward counted by ``FlopCounterMode``, times three
for the backward); MFU divides the achieved FLOP/s by the peak of the device in use and is "n/a"
where no peak is known (CPUs). Step times are taken between device synchronisations, after
``--warmup`` untimed steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402
from common.setup import enable_tf32  # noqa: E402
from diffusion import create_diffusion  # noqa: E402
from imagedata.inputs import Images  # noqa: E402
from imagedata.latents import LatentDataset  # noqa: E402
from loss.denoising import DDPMObjective  # noqa: E402
from methods.denoising import DenoisingMethod  # noqa: E402
from models import MODEL_NAMES, create_model  # noqa: E402
from models.vae import HUB_NAMES, SD_VAE_SCALE, PixelCodec, load_vae  # noqa: E402
from training.data import Batches  # noqa: E402
from training.engine import Engine  # noqa: E402
from training.throughput import mfu, peak_flops, train_flops_per_sample  # noqa: E402

LR = 1e-4  # train.py's default
EMA_DECAY = 0.9999
SD_VAE_GEOMETRY = (4, 8)  # latent channels, downsampling factor of sd-vae-ft-ema / -mse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--model", type=str, default="DiT-XL/2", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--vae", type=str, default="ema", help="ema | mse | none (pixel space) | folder | hub id; "
                   "only its latent shape is used")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimizer step on this device")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="images per forward/backward; gradients accumulate (default: --batch-size)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--compare-precision", action="store_true", help="run fp32 (TF32 on CUDA) and bf16")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocation, autotuning, compile)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=str, default=None, help="append one JSON line per configuration")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    if args.model not in MODEL_NAMES:
        raise ValueError(f"unknown --model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    for name in ("image_size", "num_classes", "batch_size", "steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    micro = args.micro_batch_size or args.batch_size
    if micro <= 0 or args.batch_size % micro != 0:
        raise ValueError(f"--micro-batch-size {micro} must be positive and divide --batch-size {args.batch_size}")


def latent_geometry(vae: str) -> tuple[int, int]:
    """(channels, downsampling factor) of the codec's latents, without loading SD-VAE weights."""
    if vae == "none":
        return 3, 1
    if vae in HUB_NAMES or vae in HUB_NAMES.values():
        return SD_VAE_GEOMETRY
    codec = load_vae(vae)
    return codec.latent_channels, codec.downsample


def count_train_flops(model_name: str, channels: int, size: int, num_classes: int) -> float:
    """Training FLOPs per image (``training.throughput``), counted on the meta device: no memory, no compute."""
    with torch.device("meta"):
        model = create_model(model_name, input_size=size, num_classes=num_classes, in_channels=channels)
        x = torch.zeros(1, channels, size, size)
        t = torch.zeros(1, dtype=torch.long)
    return train_flops_per_sample(model.eval(), x, t, t)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: reset the process's peak RSS so each configuration reports its own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` on CUDA; the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def precision_label(precision: str, device: torch.device) -> str:
    if precision != "no":
        return precision
    return "fp32 (tf32)" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


def accelerator_for(precision: str, compile_model: bool):
    """A fresh ``Accelerator`` for ``precision``: its state is reset first, so one process can measure
    several precisions in turn."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, dynamo_backend="inductor" if compile_model else "no",
                       cpu=not torch.cuda.is_available())


def synthetic_batches(args: argparse.Namespace, channels: int, size: int, device: torch.device):
    """Micro-batches forever, as the loader would give them: posterior moments (mean, std) of each image
    and of its flip, as in a latent cache, or images in [-1, 1] with ``--vae none``; random labels."""
    batch, micro = args.batch_size, args.micro_batch_size or args.batch_size
    y = torch.randint(0, args.num_classes, (batch,), device=device)
    if args.vae == "none":
        x = torch.rand(batch, channels, size, size, device=device) * 2 - 1
    else:
        mean = torch.randn(batch, 2, channels, size, size, device=device) * 5
        x = torch.cat([mean, torch.full_like(mean, 0.01)], dim=2)
    while True:
        yield from zip(x.split(micro), y.split(micro))


class CachedLatents:
    """The stored form of a latent cache (``imagedata/latents.py``) without its files: synthetic moments."""

    scale = SD_VAE_SCALE
    model_input = LatentDataset.model_input


def measure(args: argparse.Namespace, precision: str, device: torch.device) -> dict:
    """Build the DDPM method and the engine as train.py does, run warm-up and timed steps, return the record."""
    channels, down = latent_geometry(args.vae)
    size = args.image_size // down
    batch, micro = args.batch_size, args.micro_batch_size or args.batch_size
    reset_peak_memory(device)
    torch.manual_seed(args.seed)

    accelerator = accelerator_for(precision, args.compile)
    model = create_model(args.model, input_size=size, num_classes=args.num_classes, in_channels=channels)
    n_params = sum(p.numel() for p in model.parameters())
    stored = Images() if args.vae == "none" else CachedLatents()
    method = DenoisingMethod(model, DDPMObjective(create_diffusion(timestep_respacing="")),
                             Batches(stored, PixelCodec(), device), lr=LR, ema_decay=EMA_DECAY)
    engine = Engine(accelerator, method, grad_accum=batch // micro)
    engine.init_emas()
    model.train()
    batches = synthetic_batches(args, channels, size, device)

    times = []
    for i in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        losses = engine.one_step(batches)
        engine.steps += 1
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    loss = losses["loss"].item()
    if not math.isfinite(loss):
        raise ValueError(f"loss became {loss} within {args.warmup + args.steps} steps; try --mixed-precision bf16")
    peak_mem = peak_memory_bytes(device)
    del model, method, engine
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    flops = count_train_flops(args.model, channels, size, args.num_classes)
    mean_s, median_s = statistics.fmean(times), statistics.median(times)
    images_per_sec = batch / mean_s
    peak = peak_flops(device, precision)
    return {
        "model": args.model, "image_size": args.image_size, "vae": args.vae,
        "input_shape": [channels, size, size], "parameters": n_params,
        "mixed_precision": precision, "precision": precision_label(precision, device),
        "batch_size": batch, "micro_batch_size": micro, "accumulation_steps": batch // micro,
        "compile": args.compile, "warmup": args.warmup, "steps": args.steps,
        "step_time_mean_s": mean_s, "step_time_median_s": median_s, "images_per_sec": images_per_sec,
        "peak_memory_bytes": peak_mem,
        "peak_memory_kind": "max_memory_allocated" if device.type == "cuda" else "peak RSS",
        "train_flops_per_image": flops, "achieved_flops": images_per_sec * flops, "peak_flops": peak,
        "mfu": mfu(images_per_sec, flops, peak), "loss": loss, "device": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


HEADER = ("| model | input | precision | batch (micro) | compile | step ms mean | step ms median | img/s "
          "| peak mem GiB | GFLOP/img | MFU |\n|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    mfu_text = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    return (f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | {r['precision']} "
            f"| {r['batch_size']} ({r['micro_batch_size']}) | {'yes' if r['compile'] else 'no'} "
            f"| {1000 * r['step_time_mean_s']:.1f} | {1000 * r['step_time_median_s']:.1f} "
            f"| {r['images_per_sec']:.2f} | {r['peak_memory_bytes'] / 2**30:.2f} "
            f"| {r['train_flops_per_image'] / 1e9:.4g} | {mfu_text} |")


def main(args: argparse.Namespace) -> list[dict]:
    validate(args)
    latent_geometry(args.vae)  # a bad --vae fails before any model is built
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        enable_tf32()  # as train.py (setup_accelerator)
    precisions = ["no", "bf16"] if args.compare_precision else [args.mixed_precision]
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.warmup} warm-up + {args.steps} "
          f"timed steps; peak memory is {'max_memory_allocated' if device.type == 'cuda' else 'peak RSS'}")
    print(HEADER, flush=True)
    records = []
    try:
        for precision in precisions:
            record = measure(args, precision, device)
            records.append(record)
            print(format_row(record), flush=True)
            if args.output:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                with open(args.output, "a") as f:
                    f.write(json.dumps(record) + "\n")
    finally:  # the measured precision and compile setting must not outlive the call (accelerate's state is global)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return records


if __name__ == "__main__":
    run_cli(main, parse_args())
