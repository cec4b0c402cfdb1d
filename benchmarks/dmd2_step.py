"""DMD2 step time and peak memory with any DiT / SiT teacher (random weights; synthetic latents, no VAE).

  python benchmarks/dmd2_step.py --model DiT-XL/2 --image-size 256 --batch-size 32 --mixed-precision bf16
  python benchmarks/dmd2_step.py --model DiT-XL/2 --image-size 256 --batch-size 32 --gradient-checkpointing
  python benchmarks/dmd2_step.py --model DiT-Ti/4 --image-size 32 --batch-size 4 --steps 3   # CPU smoke run

The steps are train_dmd2.py's (``methods/dmd2.py`` on the training engine), with DMD2's ImageNet settings:
real guidance 1.5 (the teacher has a null class), the GAN head on the fake score's bottleneck with
diffusion-GAN noise, generator and guidance learning rates 2e-6. With ``--dfake_gen_update_ratio 5`` one step in five
updates the generator (a "generator step": the DM loss through the teacher with guidance and the fake score, and
the GAN generator loss) before the guidance update that every step has; the table gives both kinds, timed between
device synchronisations after ``--warmup`` untimed rounds, and the peak memory (CUDA: max_memory_allocated; CPUs:
the process's peak RSS).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.train_throughput import peak_memory_bytes, reset_peak_memory, synchronize  # noqa: E402
from common.setup import setup_accelerator  # noqa: E402
from diffusion.network import contract  # noqa: E402
from diffusion.pipeline import base_alphas_cumprod, diffusion_for  # noqa: E402
from loss.denoising import DDPMObjective, InterpolantObjective  # noqa: E402
from methods.dmd2_cli import build_method, condition_sampler, freeze  # noqa: E402
from methods.dmd2_cli import parse_args as dmd2_args  # noqa: E402
from methods.dmd2_teacher import DDPMTeacher, FlowTeacher  # noqa: E402
from models import MODEL_NAMES, create_model  # noqa: E402
from training.engine import Engine  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default="DiT-XL/2", help=f"one of {', '.join(MODEL_NAMES)}")
    p.add_argument("--image-size", type=int, default=256, help="pixels; latents are /8 with 4 channels")
    p.add_argument("--batch-size", type=int, default=32, help="per device (DMD2's ImageNet: 40)")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="bf16")
    p.add_argument("--dfake-gen-update-ratio", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of --dfake-gen-update-ratio steps")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--gradient-checkpointing", action="store_true", help="train_dmd2.py's --gradient_checkpointing: "
                   "the generator's and the fake score's blocks recompute their activations")
    return p.parse_args(argv)


def teacher_for(name: str, latent_size: int, device):
    model = create_model(name, input_size=latent_size, num_classes=1000, in_channels=4).to(device).eval()
    freeze(model)
    if contract(model).prediction == "velocity":
        return FlowTeacher(model, "linear", InterpolantObjective("linear", proj_coeff=0.0), null=1000)
    return DDPMTeacher(model, base_alphas_cumprod(), DDPMObjective(diffusion_for(model, "")), null=1000)


def main(args: argparse.Namespace) -> list[dict]:
    accelerator = setup_accelerator(args.mixed_precision)
    device, size = accelerator.device, args.image_size // 8
    teacher = teacher_for(args.model, size, device)
    flags = dmd2_args(["--teacher", "-", "--real_guidance_scale", "1.5", "--gan_classifier", "--gen_cls_loss_weight",
                       "3e-3", "--cls_loss_weight", "1e-2", "--diffusion_gan", "--diffusion_gan_max_timestep", "1000",
                       "--dfake_gen_update_ratio", str(args.dfake_gen_update_ratio), "--warmup_step", "0",
                       *(["--gradient_checkpointing"] if args.gradient_checkpointing else [])])
    cfg = {"latent_channels": 4, "latent_size": size, "model_kwargs": {}, "ckpt": args.model, "model": args.model,
           "image_size": args.image_size, "num_classes": 1000, "vae": "ema"}
    draw = condition_sampler(teacher, 1000)

    def data(_batch):
        return torch.randn(args.batch_size, 4, size, size, device=device), draw(args.batch_size, device)

    method = build_method(flags, teacher, cfg, None, data, draw, device, args.batch_size)
    engine = Engine(accelerator, method)
    batches = iter(lambda: None, 0)
    ratio = args.dfake_gen_update_ratio
    for _ in range(args.warmup * ratio):
        engine.one_step(batches)
        engine.steps += 1
    reset_peak_memory(device)
    times = {"generator": [], "guidance": []}
    for _ in range(args.steps):
        kind = "generator" if engine.steps % ratio == 0 else "guidance"
        synchronize(device)
        start = time.perf_counter()
        engine.one_step(batches)
        synchronize(device)
        times[kind].append(time.perf_counter() - start)
        engine.steps += 1
    peak = peak_memory_bytes(device) / 2**30
    rows = []
    checkpointing = "yes" if args.gradient_checkpointing else "no"
    print("| teacher | batch | precision | checkpointing | step | step time (s, mean / median) | img/s | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, values in times.items():
        if not values:
            continue
        mean, median = statistics.mean(values), statistics.median(values)
        rows.append({"model": args.model, "batch_size": args.batch_size, "precision": args.mixed_precision,
                     "step": kind, "mean_s": mean, "median_s": median, "peak_gib": peak, "steps": len(values),
                     "gradient_checkpointing": args.gradient_checkpointing})
        print(f"| {args.model} {args.image_size}px | {args.batch_size} | {args.mixed_precision} | {checkpointing} | {kind} | "
              f"{mean:.3f} / {median:.3f} | {args.batch_size / mean:.1f} | {peak:.2f} |")
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch "
          f"{torch.__version__}; {args.steps} timed steps after {args.warmup * ratio} untimed")
    return rows


if __name__ == "__main__":
    main(parse_args())
