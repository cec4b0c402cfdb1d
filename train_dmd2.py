"""DMD2: distil any diffusion teacher of this repository into a one- or few-step generator.

  accelerate launch train_dmd2.py --teacher results/000-DiT-XL-2/checkpoints/0400000.pt --real_image_path \\
      data/imagenet-256_lmdb --batch_size 32 --generator_lr 2e-6 --guidance_lr 2e-6 --real_guidance_scale 1.5 \\
      --dfake_gen_update_ratio 5 --gan_classifier --gen_cls_loss_weight 3e-3 --cls_loss_weight 1e-2 \\
      --diffusion_gan --diffusion_gan_max_timestep 1000 --use_fp16
  torchrun --nproc_per_node 7 train_dmd2.py --model_id edm-imagenet-64x64-cond-adm.pkl \\
      --real_image_path imagenet-64x64_lmdb ...      # DMD2's ImageNet-64 recipe (train.sh RECIPE=dmd2-imagenet)

The flags are DMD2's (``main/edm/train_edm.py`` and ``main/train_sd.py``, hyphenated aliases too). The story:
check the flags; load the teacher (``methods/dmd2_cli.py``) and the real images; build the generator and the
guidance model into the method (``methods/dmd2.py``); only then open the run folder; then the engine trains,
checkpointing (the generator under ``model``: ``sample.py`` and ``sample_ddp.py`` read it as any model) and
drawing the generator's samples on the way.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from torch.utils.data import default_collate

from common.cli import check_writable_dir, first_paragraph, run_cli
from imagedata import class_names
from methods.dmd2_cli import (
    build_method,
    check_teacher_shape,
    condition_sampler,
    load_teacher,
    run_parts,
    validate,
)
from methods.dmd2_cli import parse_args as recipe_args
from methods.dmd2_weights import ADDABLE, export_dmd2_folder, load_into, weights_only
from training.data import Batches
from training.engine import NonFiniteLoss
from training.fit import Checkpoints, Grids, RunSpec, TrainData, fit

CKPT_KEYS = ("model", "guidance", "opt", "opt_guidance", "args", "steps")
RESUME_KEYS = ("teacher", "batch_size", "real_guidance_scale", "conditioning_sigma", "conditioning_timestep",
               "denoising", "num_denoising_step", "gan_classifier", "cls_on_clean_image", "generator_lora")


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


def open_data(args, cfg: dict, teacher, codec, device):
    """``(kind, dataset, batch -> (real x, their conditions))`` of ``--real_image_path`` / ``--dataset``, the real
    data as stored (DMD2 flips nothing): images through the teacher's codec with their labels, DMD2's SD latents
    with their prompts' embeddings; ``(None, None, ...)`` without real data."""
    from imagedata import build_dataset, resolve_dataset_kind

    if args.real_image_path is None and args.dataset is None:
        if args.gan_classifier or args.cls_on_clean_image or (args.denoising and not args.backward_simulation):
            raise ValueError("the GAN head and --denoising without --backward_simulation need real images: pass "
                             "--real_image_path (or --dataset builtin)")
        if args.denoising and teacher.prompts is not None:
            raise ValueError("--denoising on a text-to-image teacher conditions the generator on the real data's "
                             "prompts, as DMD2 does: pass --real_image_path (DMD2's LMDB of latents and prompts)")
        return None, None, lambda batch: (None, None)
    # DMD2's SD LMDB holds latents and prompts
    kind = "lmdb-latents" if cfg["model"] == "diffusers" else resolve_dataset_kind(args.dataset, args.real_image_path)
    dataset = build_dataset(kind, args.real_image_path, cfg["image_size"], cfg["num_classes"])
    batches = Batches(dataset, codec, device, flip=False, conditions=teacher.encoder)
    return kind, dataset, lambda batch: batches(batch)[1:]


def check_real_data(data, dataset, shape: tuple[int, ...], device) -> None:
    """One real item through ``data`` before the run folder exists, so that real data the teacher's codec cannot
    read, or of another shape than the generator's samples, is refused first; the random streams stay as they were."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        x, _ = data(default_collate([dataset[0]]))
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"the real data is {tuple(x.shape[1:])} per item after the teacher's codec, but the generator "
                         f"makes {shape}: pass real images of the teacher's resolution (or latents of its VAE)")


def main(args: argparse.Namespace) -> None:
    validate(args)
    for flag in ("cache_dir", "log_path"):
        if getattr(args, flag):
            check_writable_dir(getattr(args, flag), f"--{flag}")
    # --ckpt_only_path: the weights and the step they were saved at; the learning rates warm up from there
    only = weights_only(args.ckpt_only_path) if args.ckpt_only_path else None
    start = only[2] if only else 0

    def build(process):
        """Everything that can fail comes before the run folder: teacher, data, networks."""
        teacher, cfg, codec = load_teacher(args, process.device)
        cfg.update(latent_channels=codec.latent_channels, latent_size=cfg["image_size"] // codec.downsample)
        check_teacher_shape(args, cfg)
        kind, dataset, data = open_data(args, cfg, teacher, codec, process.device)
        draw_labels = condition_sampler(teacher, cfg["num_classes"])
        if dataset is not None:
            shape = (cfg["latent_channels"], cfg["latent_size"], cfg["latent_size"])
            check_real_data(data, dataset, shape, process.device)
        method = build_method(args, teacher, cfg, codec, data, draw_labels, process.device, args.batch_size,
                              processes=process.world, warmup_from=start)
        if only is not None:
            generator, guidance, _ = only
            where = f"--ckpt_only_path {args.ckpt_only_path}"
            load_into(method.modules["model"], generator, f"{where} (the generator)")
            added = load_into(method.modules["guidance"], guidance, f"{where} (the guidance model)", tuple(ADDABLE))
            method.notes += (f"{where}: the generator's and the guidance model's weights at step {start}, fresh "
                             "optimizer states", *(f"{where} has no {prefix.rstrip('.')}.* ({ADDABLE[prefix]}), which "
                                                   "this run adds: it starts fresh" for prefix in added))
        names = class_names(kind, cfg["num_classes"], dataset) if teacher.prompts is None else None
        note = f"{kind} ({len(dataset):,} items)" if dataset is not None else "none (no GAN head, no --denoising)"
        return method, TrainData(dataset, kind, names, f"{args.dataset_name}: {note}" if args.dataset_name else note)

    name_suffix = f"-{args.dataset_name}" if args.dataset_name else ""
    fit(build, RunSpec(
        results_dir=args.output_path, results_flag="--output_path", exp_name=args.exp_name,
        run_name=lambda method: f"DMD2-{method.sampling_record['model']}{name_suffix}",
        record=vars(args), max_steps=args.train_iters, steps_flag="--train_iters",
        batch_size=args.batch_size, per_process_batch=True, batch_flag="--batch_size", seed=args.seed,
        num_workers=args.num_workers, mixed_precision="bf16" if args.use_fp16 else "no", shard=args.fsdp, shard_flag="--fsdp",
        log_every=1 if args.log_loss else args.wandb_iters, start_step=start,
        checkpoints=Checkpoints(every=args.log_iters, save=not args.no_save, keep=1 if args.delete_ckpts else None,
                                copy_to=args.cache_dir or None, copies_kept=args.max_checkpoint,
                                export=partial(export_dmd2_folder, keep_only=args.delete_ckpts)
                                if args.checkpoint_layout == "dmd2" else None),
        grids=Grids(every=args.wandb_iters, seed=args.seed, samples=args.grid_size**2, nrow=args.grid_size),
        **run_parts(args, "train_dmd2.py", RESUME_KEYS, CKPT_KEYS)))


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
