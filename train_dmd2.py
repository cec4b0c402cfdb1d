"""DMD2: distil any diffusion teacher of this repository into a one- or few-step generator.

  accelerate launch train_dmd2.py --teacher results/000-DiT-XL-2/checkpoints/0400000.pt --real_image_path \\
      data/imagenet-256_lmdb --batch_size 32 --generator_lr 2e-6 --guidance_lr 2e-6 --real_guidance_scale 1.5 \\
      --dfake_gen_update_ratio 5 --gan_classifier --gen_cls_loss_weight 3e-3 --cls_loss_weight 1e-2 \\
      --diffusion_gan --diffusion_gan_max_timestep 1000 --use_fp16
  torchrun --nproc_per_node 7 train_dmd2.py --model_id edm-imagenet-64x64-cond-adm.pkl \\
      --real_image_path imagenet-64x64_lmdb ...      # DMD2's ImageNet-64 recipe (train.sh RECIPE=dmd2-imagenet)

The flags are DMD2's (``main/edm/train_edm.py`` and ``main/train_sd.py``, hyphenated aliases too). The story:
check the flags; load the teacher (``training/dmd2_recipe.py``) and the real images; build the generator and the
guidance model into the method (``training/dmd2.py``); only then open the run folder; then the engine trains,
checkpointing (the generator under ``model``: ``sample.py`` and ``sample_ddp.py`` read it as any model) and
drawing the generator's samples on the way.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from torch.utils.data import default_collate

from data import class_names
from training import checkpoint as ckpt_io
from training.cli import check_writable_dir, first_paragraph, run_cli
from training.data import make_loader
from training.dmd2_recipe import build_method, check_teacher_shape, condition_sampler, load_teacher, validate
from training.dmd2_recipe import parse_args as recipe_args
from training.dmd2_weights import ADDABLE, load_into, weights_only
from training.engine import Engine, NonFiniteLoss
from training.hooks import RunHooks
from training.methods import Batches
from training.run import open_run, plan_run_folder
from training.schedule import constant_with_warmup
from training.setup import prepare_tracker, seed_everything, setup_accelerator
from training.visual import grid_labels

CKPT_SUBDIR = "checkpoints"
CKPT_KEYS = ("model", "guidance", "opt", "opt_guidance", "args", "steps")
RESUME_KEYS = ("teacher", "batch_size", "real_guidance_scale", "conditioning_sigma", "conditioning_timestep",
               "denoising", "num_denoising_step", "gan_classifier", "cls_on_clean_image", "generator_lora")


def parse_args(argv=None) -> argparse.Namespace:
    return recipe_args(argv, first_paragraph(__doc__))


class GeneratorHooks(RunHooks):
    """The run's hooks with the generator (no EMA) as the network that samples, on grids of
    ``--grid_size`` squared samples (a text-to-image generator's: its first training prompts, ``prompts``
    their embeddings); checkpoints as DMD2 keeps them (``--no_save``, ``--delete_ckpts``, ``--cache_dir``)."""

    def __init__(self, engine, args, run_dir, ckpt_subdir, logger, codec, names, kind, data, prompts=None):
        self.prompts = prompts
        grid_args = argparse.Namespace(**{**vars(args), "num_classes": args.num_classes or 1})
        super().__init__(engine, grid_args, run_dir, ckpt_subdir, logger, codec, names, kind, data)
        self.args = args

    def grid_layout(self, args) -> tuple[torch.Tensor, int]:
        size = args.grid_size**2
        if self.prompts is not None:
            return self.prompts[:size].cpu(), args.grid_size
        labels, nrow = grid_labels(args.num_classes, size)
        return labels, (args.grid_size if args.num_classes > size else nrow)

    def ema(self) -> torch.nn.Module:
        return self.engine.gathered("model")

    def save(self, step: int) -> None:
        if self.args.no_save:
            return
        super().save(step)
        if not self.is_main:
            return
        path = self.run_dir / self.ckpt_subdir / f"{step:07d}.pt"
        if self.args.delete_ckpts:  # DMD2: only the newest checkpoint stays in the run folder
            for stale in ckpt_io.keep_newest(path.parent, 1):
                self.logger.info(f"removed {stale} (--delete_ckpts)")
        if self.args.cache_dir:  # DMD2: a copy in the cache, which keeps the newest --max_checkpoint
            cache = Path(self.args.cache_dir) / self.run_dir.name
            ckpt_io.copy_atomic(path, cache / path.name)
            ckpt_io.keep_newest(cache, self.args.max_checkpoint)
            self.logger.info(f"copied {path.name} to {cache}")


def open_data(args, cfg: dict, device):
    """``(kind, dataset)`` of ``--real_image_path`` / ``--dataset``, or ``(None, None)`` without real images."""
    from data import build_dataset, resolve_dataset_kind

    if args.real_image_path is None and args.dataset is None:
        if args.gan_classifier or args.cls_on_clean_image or (args.denoising and not args.backward_simulation):
            raise ValueError("the GAN head and --denoising without --backward_simulation need real images: pass "
                             "--real_image_path (or --dataset builtin)")
        return None, None
    if cfg["model"] == "diffusers":  # DMD2's SD LMDB: latents and prompts
        from data.lmdb import LMDBLatentsPrompts

        return "lmdb-latents", LMDBLatentsPrompts(args.real_image_path)
    kind = resolve_dataset_kind(args.dataset, args.real_image_path)
    return kind, build_dataset(kind, args.real_image_path, cfg["image_size"], cfg["num_classes"])


def real_data(kind, dataset, codec, teacher, device):
    """``batch -> (real x, their conditions)``, the real data as stored (DMD2 flips nothing): images through the
    teacher's codec with their labels, DMD2's SD latents with their prompts' embeddings; ``(None, None)`` without
    real data."""
    if dataset is None:
        return lambda batch: (None, None)
    if kind == "lmdb-latents":
        def latents_and_prompts(batch):
            latents, prompts = batch
            return latents.to(device), teacher.encoder(prompts)
        return latents_and_prompts
    batches = Batches(kind, codec, dataset, device, flip=False)
    return lambda batch: batches(batch)[1:]


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
    resume = ckpt_io.load_training_checkpoint(args.checkpoint_path, CKPT_KEYS, "train_dmd2.py") \
        if args.checkpoint_path else None
    for flag in ("output_path", "cache_dir", "log_path"):
        if getattr(args, flag):
            check_writable_dir(getattr(args, flag), f"--{flag}")
    accelerator = setup_accelerator("bf16" if args.use_fp16 else "no", args.report_to)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    seed_everything(args.seed * world + rank)

    # Everything that can fail comes before the run folder: teacher, data, networks.
    teacher, cfg, codec = load_teacher(args, device)
    cfg.update(latent_channels=codec.latent_channels, latent_size=cfg["image_size"] // codec.downsample)
    check_teacher_shape(args, cfg)
    kind, dataset = open_data(args, cfg, device)
    num_classes = cfg["num_classes"]
    draw_labels = condition_sampler(teacher, num_classes)
    data = real_data(kind, dataset, codec, teacher, device)
    if dataset is not None:
        check_real_data(data, dataset, (cfg["latent_channels"], cfg["latent_size"], cfg["latent_size"]), device)
        loader, sampler = make_loader(dataset, args.batch_size, world, rank, args.seed, args.num_workers)
        if len(sampler) < args.batch_size:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch; lower --batch_size")
    method = build_method(args, teacher, cfg, codec, data, draw_labels, device, args.batch_size)
    start, added = 0, []  # --ckpt_only_path: the step its weights were saved at; the learning rates warm up from there
    if args.ckpt_only_path:
        generator, guidance, start = weights_only(args.ckpt_only_path)
        load_into(method.modules["model"], generator, f"--ckpt_only_path {args.ckpt_only_path} (the generator)")
        added = load_into(method.modules["guidance"], guidance,
                          f"--ckpt_only_path {args.ckpt_only_path} (the guidance model)", tuple(ADDABLE))
    args.warmup_from = resume["args"].get("warmup_from", 0) if resume else start
    for key in RESUME_KEYS if resume else ():
        if resume["args"].get(key) != getattr(args, key):
            raise ValueError(f"--checkpoint_path: the checkpoint was trained with --{key} {resume['args'].get(key)}, "
                             f"not {getattr(args, key)}; pass the same flags")
    # what sampling reads back from the generator's checkpoint: the teacher's flags
    args.model, args.image_size, args.num_classes, args.vae = cfg["model"], cfg["image_size"], num_classes, cfg["vae"]
    args.noise_schedule = {"squaredcos_cap_v2": "cosine"}.get(cfg.get("noise_schedule"), "linear")
    args.path_type, args.global_seed, args.eval_ref, args.overfit = cfg.get("path_type"), args.seed, None, False
    steps = resume["steps"] if resume else start
    if args.train_iters <= steps:
        raise ValueError(f"nothing to do: the checkpoint is at step {steps}; raise --train_iters")
    name = f"DMD2-{cfg['model']}" + (f"-{args.dataset_name}" if args.dataset_name else "")
    run_folder = plan_run_folder(args.output_path, name, args.exp_name,
                                 Path(args.checkpoint_path) if resume else None, steps, CKPT_SUBDIR)
    tracker_note = prepare_tracker(args.report_to)
    data_note = f"{kind} ({len(dataset):,} items)" if dataset is not None else "none (no GAN head, no --denoising)"
    if args.dataset_name:
        data_note = f"{args.dataset_name}: {data_note}"
    wandb = {"entity": args.wandb_entity, "name": args.wandb_name}
    run_dir, logger = open_run(accelerator, run_folder, CKPT_SUBDIR, args, data_note, tracker_note,
                               logging_dir=str(Path(args.log_path).absolute()) if args.log_path else None,
                               project=args.wandb_project, wandb={k: v for k, v in wandb.items() if v})
    for key, module in method.modules.items():
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        logger.info(f"{key}: {sum(p.numel() for p in module.parameters()):,} parameters, {trained:,} trained")
    logger.info(f"teacher {cfg['ckpt']} ({cfg['model']}, {teacher.family}); generator noise levels "
                f"{[round(s, 4) for s in method.generator_sigmas]}")

    def schedule(step: int, base: float) -> float:  # the warm-up restarts at a --ckpt_only_path start
        return constant_with_warmup(step - args.warmup_from, base, args.warmup_step, world)

    engine = Engine(accelerator, method, lr_at=schedule, shard=args.fsdp)
    if resume is not None:
        engine.load_state_dict(resume, logger)
        engine.saved.append((steps, Path(args.checkpoint_path)))
    elif start:
        engine.steps = start
        logger.info(f"--ckpt_only_path {args.ckpt_only_path}: the generator's and the guidance model's weights at "
                    f"step {start}, fresh optimizer states")
    for prefix in added:
        logger.info(f"--ckpt_only_path {args.ckpt_only_path} has no {prefix.rstrip('.')}.* ({ADDABLE[prefix]}), "
                    "which this run adds: it starts fresh")
    prompts = getattr(teacher, "prompts", None)
    names = class_names(kind, num_classes, dataset) if prompts is None else None
    hooks = GeneratorHooks(engine, args, run_dir, CKPT_SUBDIR, logger, codec, names, kind, dataset, prompts)
    global_batch = args.batch_size * world
    logger.info(f"training for {args.train_iters:,} steps, batch {global_batch}, from step {steps}")
    every = {args.log_iters: [hooks.save]}
    every.setdefault(args.wandb_iters, []).append(hooks.grid)
    stream = engine.batches(loader, sampler, args.batch_size) if dataset is not None else itertools.repeat(None)
    engine.train(stream, args.train_iters, log_every=1 if args.log_loss else args.wandb_iters, log=hooks.log,
                 every=every,
                 global_batch=global_batch, mixed_precision="bf16" if args.use_fp16 else "no")
    hooks.finish()
    accelerator.end_training()


if __name__ == "__main__":
    run_cli(main, parse_args(), (NonFiniteLoss,))
