"""``fit``: the one run lifecycle of every training entry point.

A training script parses its original's flags, validates them, fills in a ``RunSpec`` and hands ``fit``
a function that builds its method (``Method``) and training data on the process's device. ``fit`` then:

1. loads the checkpoint to resume (``Resume``) and checks that the results folder can be written;
2. sets up the processes (accelerate: DDP, mixed precision, TF32) and seeds each one (DiT: ``seed x world
   + rank``);
3. builds the method and the data, checks that the resumed run was trained with the same settings, and
   plans the run folder: everything that can fail comes before anything is written;
4. opens the run folder (``args.json``, ``log.txt``, trackers), builds the ``Engine`` and loads the
   checkpoint (or starts the EMAs), and trains with the every-N table: checkpoints, sample grids,
   evaluations; the run ends with its summary.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import checkpoint as ckpt_io
from common.cli import check_writable_dir, one_line
from common.setup import launched_with_fsdp, prepare_tracker, seed_everything, setup_accelerator
from training.data import batch_sizes, make_loader
from training.engine import Engine, Method
from training.hooks import RunHooks
from training.run import open_run, plan_run_folder


@dataclass
class Process:
    """What a builder needs to know about the process it builds on."""

    device: torch.device
    rank: int
    world: int


@dataclass
class TrainData:
    """The training data a method reads: ``dataset`` (None: the method draws its own inputs), ``kind``
    (``builtin`` turns on the proxy metrics), the class names the grids show, and a line for the log."""

    dataset: object | None
    kind: str | None = None
    names: list[str] | None = None
    note: str | None = None
    overfit: bool = False  # the run ends with the overfit report (samples beside their training images)

    def describe(self) -> str:
        if self.note:
            return self.note
        return f"{self.kind} ({len(self.dataset):,} items)" if self.dataset is not None else "none"


@dataclass
class Resume:
    """The checkpoint a run continues, and what must match: ``match`` names recorded flags (keys of the
    run's ``record``) that the checkpoint's ``args`` must hold with the same values. ``convert`` turns a
    foreign checkpoint (e.g. one of the original's own) into the engine's layout; ``keys`` are those a
    checkpoint must have. ``flag`` and ``flag_name`` spell the messages in the script's own flags."""

    path: Path | None = None
    match: tuple[str, ...] = ()
    flag: str = "--resume"
    flag_name: Callable[[str], str] = lambda key: "--" + key.replace("_", "-")
    keys: tuple[str, ...] = ckpt_io.TRAINING_KEYS
    script: str = "train.py"
    convert: Callable[[dict], dict] | None = None

    def load(self) -> dict | None:
        if self.path is None:
            return None
        state = ckpt_io.load_training_checkpoint(self.path, self.keys, self.script)
        return self.convert(state) if self.convert is not None else state

    def check(self, state: dict, record: dict) -> None:
        """Resuming is re-running the same command: the settings that shape the run must match."""
        old = state.get("args") or {}
        for key in self.match:
            if key in old and old[key] != record.get(key):
                raise ValueError(f"{self.flag}: the checkpoint was trained with {self.flag_name(key)} {old[key]}, "
                                 f"not {record.get(key)}; pass the same flags as the original run")


@dataclass
class Checkpoints:
    """Where and how often checkpoints are written: ``{run folder}/{folder}/{name(step)}`` every ``every``
    steps and at the last; ``keep``: only the newest N stay in the run folder; ``copy_to``: a copy in
    ``{copy_to}/{run folder name}/``, where the newest ``copies_kept`` stay; ``save=False`` writes none."""

    every: int
    folder: str = "checkpoints"
    name: Callable[[int], str] = "{:07d}.pt".format
    save: bool = True
    keep: int | None = None
    copy_to: str | None = None
    copies_kept: int | None = None
    export: Callable[[dict, Path, int], list[Path]] | None = None  # also (state, run folder, step) -> its files


@dataclass
class Grids:
    """A grid of the sampled network's samples of fixed noise (drawn from ``seed``) every ``every`` steps;
    ``samples`` and ``nrow`` (default: one row per class, ``training.visual.grid_labels``)."""

    every: int
    seed: int = 0
    samples: int | None = None
    nrow: int | None = None


@dataclass
class Evaluation:
    """Scoring samples of the sampled network every ``every`` steps (0: never): proxy metrics on the built-in
    data, ADM's metrics against ``ref`` (with the Inception weights ``inception_weights``)."""

    every: int = 0
    samples: int = 500
    sampling_steps: int = 250
    cfg_scale: float = 1.0
    ref: str | None = None
    inception_weights: str | None = None


@dataclass
class Trackers:
    """wandb / tensorboard: files in ``{run folder}/{logging_dir}`` (an absolute path: there), the project
    (default: the run's name) and more of ``wandb.init``'s arguments."""

    report_to: str = "none"
    logging_dir: str | None = None
    project: str | None = None
    wandb: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    """Everything about a run that is not the method. ``record`` is what ``args.json`` and every checkpoint's
    ``args`` hold (the script's flags, read when saving); ``run_name`` names numbered run folders
    (``NNN-<name>``; a function of the built method where the name depends on what it loaded)."""

    results_dir: str
    run_name: str | Callable[[Method], str]
    checkpoints: Checkpoints
    grids: Grids
    record: dict
    exp_name: str | None = None
    results_flag: str = "--results-dir"
    max_steps: int | None = None
    epochs: int | None = None
    steps_flag: str = "--max-steps"
    batch_size: int = 256
    per_process_batch: bool = False  # DMD2's --batch_size is each process's
    batch_flag: str = "--global-batch-size"
    grad_accum: int = 1
    seed: int = 0
    num_workers: int = 4
    mixed_precision: str = "no"
    allow_tf32: bool = True
    shard: bool = False
    shard_flag: str | None = None  # the script's flag for ``shard`` (an FSDP launch config turns it on)
    compile: tuple[str, ...] = ()  # modules to torch.compile once loaded
    log_every: int = 100
    start_step: int = 0  # a fresh run that continues from weights saved at this step (DMD2's --ckpt_only_path)
    initial: Path | None = None  # a fresh run that starts from this checkpoint's weights, EMAs, optimizers (SiT's --ckpt)
    resume: Resume = field(default_factory=Resume)
    evaluation: Evaluation = field(default_factory=Evaluation)
    trackers: Trackers = field(default_factory=Trackers)


Builder = Callable[[Process], "tuple[Method, TrainData]"]


def start(engine: Engine, spec: RunSpec, resume: dict | None, initial: dict | None, logger) -> None:
    """The engine's state at the first step: the resumed checkpoint's, or fresh EMAs (from ``initial``'s weights
    when the run starts from a checkpoint) at ``spec.start_step``."""
    if resume is not None:
        engine.load_state_dict(resume, logger)
        engine.saved.append((resume["steps"], spec.resume.path))
        return
    engine.init_emas()
    if initial is not None:
        engine.load_state_dict(initial, logger, weights_only=True)
        logger.info(f"started from the weights, EMAs and optimizer states of {spec.initial}")
    engine.steps = spec.start_step


def starting_weights(path: Path, method: Method) -> dict:
    """The checkpoint a fresh run starts from (SiT's ``--ckpt``), loaded into the method's networks now, so that
    one of another network is refused before the run folder exists; an EMA it lacks starts as its network."""
    state = ckpt_io.load_checkpoint(path)
    for key, module in method.modules.items():
        if key not in state:
            raise ValueError(f"--ckpt {path} holds no {key!r} weights: pass a training checkpoint of this model")
        try:
            module.load_state_dict(method.import_weights(key, state[key]))
        except RuntimeError as error:
            raise ValueError(f"--ckpt {path}: its {key!r} weights do not fit this run's network ({one_line(error)}); "
                             "pass the same --model and sizes") from None
    return {**{key: state[src] for key, (src, _) in method.emas.items()}, **state}


def fsdp_config_sharding(spec: RunSpec) -> str | None:
    """Under ``accelerate launch`` with an FSDP config (DMD2's SDXL scripts), the run shards as its ``--fsdp`` does,
    as accelerate's plugin would have sharded it (DMD2's scripts need the config, not the flag); a line for the log."""
    if not launched_with_fsdp() or spec.shard:
        return None
    if spec.shard_flag is None:
        raise ValueError("the accelerate config asks for FSDP (distributed_type: FSDP), which this script does not "
                         "do: launch it with torchrun or a config of distributed_type MULTI_GPU")
    spec.shard = True
    return f"accelerate's config asks for FSDP: the networks are sharded as {spec.shard_flag} shards them (FSDP2)"


def fit(build: Builder, spec: RunSpec) -> Path:
    """Train the method ``build`` makes on its data, as ``spec`` says; returns the run folder."""
    resume = spec.resume.load()
    check_writable_dir(spec.results_dir, spec.results_flag)
    accelerator = setup_accelerator(spec.mixed_precision, spec.trackers.report_to, allow_tf32=spec.allow_tf32)
    shard_note = fsdp_config_sharding(spec)
    rank, world = accelerator.process_index, accelerator.num_processes
    batch = spec.batch_size * (world if spec.per_process_batch else 1)
    local_batch, update_batch = batch_sizes(batch, world, spec.grad_accum, spec.batch_flag)
    seed_everything(spec.seed * world + rank)

    method, data = build(Process(accelerator.device, rank, world))
    if resume is not None:
        spec.resume.check(resume, spec.record)
    initial = starting_weights(spec.initial, method) if spec.initial is not None else None
    flops = method.flops_per_sample()
    loader = sampler = None
    steps_per_epoch = None
    if data.dataset is not None:
        loader, sampler = make_loader(data.dataset, local_batch, world, rank, spec.seed, spec.num_workers)
        steps_per_epoch = len(sampler) // local_batch // spec.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(data.dataset)} items, fewer than one batch of {local_batch} per "
                             f"process; lower {spec.batch_flag}")
    total = min(spec.max_steps or sys.maxsize,
                spec.epochs * steps_per_epoch if spec.epochs and steps_per_epoch else sys.maxsize)
    steps = resume["steps"] if resume is not None else spec.start_step
    if total <= steps:
        where = spec.resume.path if resume is not None else "the run"
        raise ValueError(f"nothing to do: {where} is at step {steps} and this run stops at step {total} "
                         f"({spec.steps_flag}" + (", --epochs" if spec.epochs else "") +
                         f"); raise {spec.steps_flag} to train further")
    name = spec.run_name(method) if callable(spec.run_name) else spec.run_name
    run_folder = plan_run_folder(spec.results_dir, name, spec.exp_name, spec.resume.path if resume else None,
                                 steps, spec.checkpoints.folder)
    tracker_note = prepare_tracker(spec.trackers.report_to)

    # Only now is anything written: a new run folder, or the resumed run's own (its newest checkpoint).
    run_dir, logger = open_run(accelerator, run_folder, spec.checkpoints.folder, spec.record, data.describe(),
                               tracker_note, spec.trackers, spec.exp_name)
    for line in [*method.describe(), *([shard_note] if shard_note else [])]:
        logger.info(line)
    engine = Engine(accelerator, method, grad_accum=spec.grad_accum,
                    lr_at=lambda step, base: method.lr_at(step, base, total), shard=spec.shard)
    start(engine, spec, resume, initial, logger)
    for key in spec.compile:
        method.modules[key] = torch.compile(method.modules[key])
    hooks = RunHooks(engine, spec, run_dir, logger, data)
    accum = f" ({spec.grad_accum} micro-batches of {batch})" if spec.grad_accum > 1 else ""
    per_epoch = f" ({steps_per_epoch:,} per epoch)" if steps_per_epoch else ""
    logger.info(f"training for {total:,} steps{per_epoch}, global batch {update_batch}{accum}, from step {steps}")
    stream = engine.batches(loader, sampler, local_batch) if loader is not None else itertools.repeat(None)
    engine.train(stream, total, log_every=spec.log_every, log=hooks.log, every=hooks.every(),
                 global_batch=update_batch, flops_per_sample=flops, mixed_precision=spec.mixed_precision)
    hooks.finish()
    accelerator.end_training()
    return run_dir
