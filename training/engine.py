"""The training engine: one loop for every method, knowing no model family.

A *method* (``methods/denoising.py``) owns its networks and optimizers and says what one training
step does with them: which losses, which updates in which order, which ``requires_grad`` switches.
The engine owns everything around that:

- the loop over data, epoch by epoch, with the position in the epoch saved for exact resume;
- gradient accumulation (``backward`` divides by the number of micro-batches, the DDP all-reduce
  happens once, on the last one; ``step`` applies an update only there);
- mixed precision and DDP through ``accelerate`` (``prepare`` of every module and optimizer); with
  ``shard=True``, FSDP2 instead: every module and EMA is sharded over the processes with
  ``torch.distributed.fsdp.fully_shard`` (``training/sharding.py``), on GPUs and on CPUs (gloo) alike,
  where accelerate's FSDP plugin needs an accelerator; checkpoints hold the full weights, so a sharded
  run's checkpoint samples like any other;
- learning-rate schedules, gradient clipping, EMAs of any named modules (parameters and float buffers);
- the non-finite stop: every loss given to ``backward`` is checked on the device, without a host
  sync; from the first non-finite one on no update is applied (fused optimizers skip it on the
  device, as under ``GradScaler``; others are checked on the host); the run stops at the next log or
  checkpoint, naming that step and the last checkpoint written before it;
- log records every ``log_every`` steps (losses averaged on the device, one host sync per log),
  ``tqdm`` progress, ``loss.png``, trackers;
- checkpoints of named collections: every module, EMA and optimizer under its own key (a method's
  keys: ``model``, ``ema``, ``opt`` for one network, as DiT and REPA save them), plus RNG states of
  every process, data position, loss scaler and the method's own state, written atomically;
- hooks: callables run after every checkpoint and every ``eval_every`` steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from copy import deepcopy
from pathlib import Path

import torch
from accelerate.utils import gather_object

from common import checkpoint as ckpt_io
from training.ema import update_ema
from training.throughput import mfu, peak_flops


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, last_good: Path | None):
        if last_good:
            advice = f"the last good checkpoint is {last_good} (resume it with --resume and a lower --lr, or use " \
                     "--mixed-precision bf16)"
        else:
            advice = "no checkpoint was written yet: start again with a lower --lr or --mixed-precision bf16"
        super().__init__(f"loss became non-finite at step {step}; training stopped and no update was applied from "
                         f"that step on; {advice}")


class Method:
    """What a training method declares to the engine and the run around it (subclass and fill in).

    ``modules``: the trained networks by checkpoint key; ``optimizers``: by checkpoint key;
    ``emas``: EMA checkpoint key -> (module key, decay). ``train_step`` runs on one micro-batch, calls
    ``engine.backward`` and ``engine.step`` for its updates and returns its losses as scalars
    (``"loss"`` among them) for the log.

    What the run samples (grids, evaluations): the network ``sampled`` (an EMA key, or a module key for a
    method without EMA), built with ``model_kwargs`` (``in_channels`` and ``input_size`` among them), read by
    ``diffusion.pipeline.generate`` with ``sampling`` (noise schedule or path), for ``num_classes`` classes
    (0: none), decoded by ``codec``. Every checkpoint carries ``sampling_record``, what sampling it later needs
    (``models.pretrained.sampling_record``).
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    emas: dict[str, tuple[str, float]]
    sampled: str = "ema"
    model_kwargs: dict = {}
    sampling: dict = {}
    grid_cfg_scale: float | None = None  # the sample grids' guidance (None: training.visual's default)
    sampling_record: dict = {}
    num_classes: int = 0
    codec = None

    def train_step(self, engine: Engine, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def lr_at(self, step: int, base: float, total: int) -> float:
        """The learning rate of step ``step`` of ``total`` for an optimizer built with ``base`` (constant)."""
        return base

    def describe(self) -> list[str]:
        """Lines for the log when the run starts: each module's parameters, and those that train."""
        lines = []
        for key, module in self.modules.items():
            count = sum(p.numel() for p in module.parameters())
            trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
            lines.append(f"{key}: {count:,} parameters" + (f", {trained:,} trained" if trained != count else ""))
        return lines

    def grid_conditions(self, samples: int | None, nrow: int | None) -> tuple[torch.Tensor, int]:
        """The conditions of the sample grid and its row length: ``samples`` labels (default: one row per
        class) spread over the classes (``training.visual.grid_labels``)."""
        from training.visual import grid_labels

        if samples is None:
            return grid_labels(max(self.num_classes, 1))
        labels, rows = grid_labels(max(self.num_classes, 1), samples)
        return labels, (nrow or rows) if self.num_classes > samples else rows

    def grid_images(self, network: torch.nn.Module, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of the sampled ``network`` from ``noise`` (shaped by ``model_kwargs``) for the sample
        grid; by default a diffusion model's or a distilled generator's (``training.visual``)."""
        from training.visual import diffusion_grid_images

        return diffusion_grid_images(network, self.codec, noise, conditions, max(self.num_classes, 1),
                                     cfg_scale=self.grid_cfg_scale, **self.sampling)

    def flops_per_sample(self) -> float | None:
        """Training FLOPs per sample, for the MFU in the log (None: not counted)."""
        return None

    def extra_state(self) -> dict:
        """Anything else a checkpoint must hold (e.g. the model's constructor arguments)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def export_weights(self, key: str, weights: dict) -> dict:
        """Module ``key``'s state dict as checkpoints store it (e.g. in a released format's names)."""
        return weights

    def import_weights(self, key: str, weights: dict) -> dict:
        """The inverse of ``export_weights``, applied when a checkpoint is loaded."""
        return weights


def adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with the fused kernel, as every method builds its optimizers: with it the engine's skip of the
    update after a non-finite loss happens on the device (``Engine.step``), without a host sync."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=True)


class Trainable:
    """The parameters of a network that train by design, by name (a fixed sin-cos position table does not):
    ``set(module, flag)`` switches ``requires_grad`` of those only. Names, not parameter objects, so that it
    holds for the network under DDP / compile wrappers (unwrapped) and after FSDP replaces its parameters."""

    def __init__(self, module: torch.nn.Module):
        self.names = {name for name, p in module.named_parameters() if p.requires_grad}

    def set(self, module: torch.nn.Module, flag: bool) -> torch.nn.Module:
        for name, p in module.named_parameters():
            if name in self.names:
                p.requires_grad_(flag)
        return module


class Engine:
    """Runs a ``Method``; see the module docstring. ``lr_at(step, base_lr)`` gives each optimizer's
    learning rate for a step from the rate it was built with."""

    def __init__(self, accelerator, method: Method, *, grad_accum: int = 1,
                 lr_at: Callable[[int, float], float] | None = None, shard: bool = False):
        self.accelerator, self.method, self.grad_accum = accelerator, method, grad_accum
        self.lr_at = lr_at or (lambda step, base: base)
        self.emas = {key: deepcopy(method.modules[src]).to(accelerator.device).requires_grad_(False).eval()
                     for key, (src, _) in method.emas.items()}
        self.shard = shard and accelerator.num_processes > 1
        self.full = {}  # unsharded copies that sharded EMAs are gathered into for sampling
        if self.shard:
            from training.sharding import owner, shard_module

            self.full = {key: deepcopy(ema).cpu() for key, ema in self.emas.items()}
            if method.sampled in method.modules:  # a method sampling a trained network directly (no EMA: DMD2)
                self.full[method.sampled] = deepcopy(method.modules[method.sampled]).cpu().eval()
            for module in method.modules.values():
                shard_module(module, method.optimizers.values())
            for ema in self.emas.values():
                shard_module(ema)
            self.owners = {key: owner(method.modules, opt) for key, opt in method.optimizers.items()}
        items = [(method.modules, k, m) for k, m in method.modules.items() if not self.shard]
        items += [(method.optimizers, k, o) for k, o in method.optimizers.items()]
        prepared = accelerator.prepare(*(obj for _, _, obj in items))
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        for (table, key, _), value in zip(items, prepared):
            table[key] = value
        self.base_lr = {key: [g["lr"] for g in opt.param_groups] for key, opt in method.optimizers.items()}
        self.steps, self.data = 0, {"epoch": 0, "position": 0}
        self.syncing = True  # the last micro-batch of a step: gradients are all-reduced, updates applied
        self.ok = torch.ones((), dtype=torch.bool, device=accelerator.device)  # no non-finite loss so far
        self.first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        self.saved: list[tuple[int, Path]] = []

    # ----- what a method calls inside train_step -----
    def module(self, key: str) -> torch.nn.Module:
        """The unwrapped network (no DDP / compile wrapper), e.g. to switch ``requires_grad``."""
        return self.accelerator.unwrap_model(self.method.modules[key], keep_torch_compile=False)

    def autocast(self):
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` as its share of the accumulated step, noting on the device whether it is finite."""
        self.ok &= torch.isfinite(loss.detach()).all()
        self.accelerator.backward(loss / self.grad_accum)

    def step(self, key: str, max_grad_norm: float | None = None) -> torch.Tensor | None:
        """Update with optimizer ``key`` at the end of an accumulated step (else nothing): learning rate,
        clipping (returns the norm), no update after a non-finite loss, then ``zero_grad``."""
        if not self.syncing:
            return None
        opt = self.method.optimizers[key]
        params = [p for group in opt.param_groups for p in group["params"]]
        norm = self.accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm is not None else None
        if norm is not None and hasattr(norm, "full_tensor"):  # sharded parameters give a DTensor norm
            norm = norm.full_tensor()
        for group, base in zip(opt.param_groups, self.base_lr[key]):
            group["lr"] = self.lr_at(self.steps, base)
        inner = getattr(opt, "optimizer", opt)  # accelerate wraps optimizers
        # Any process's non-finite loss stops every process's updates (gradients are all-reduced).
        found_inf = self.accelerator.reduce((~self.ok).float(), reduction="max")
        if self.accelerator.scaler is not None:  # fp16: GradScaler skips steps with non-finite gradients
            opt.step()
        elif all(group.get("fused") for group in inner.param_groups):
            inner.found_inf = found_inf  # the fused kernel skips the update on the device
            opt.step()
            inner.__dict__.pop("found_inf", None)
        elif not found_inf.item():  # a host sync, for optimizers without a fused kernel only
            opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    # ----- checkpoints -----
    def state_dict(self, args: dict) -> dict:
        """Every module, EMA and optimizer under its key, with RNG (gathered from all processes), data
        position, loss scaler and the method's own state. Call on every process."""
        rngs = gather_object([ckpt_io.rng_state()])
        if self.shard:
            from training.sharding import full_optimizer_state_dict, full_state_dict

            state = {key: self.method.export_weights(key, full_state_dict(self.module(key)))
                     for key in self.method.modules}
            state.update({key: full_state_dict(ema) for key, ema in self.emas.items()})
            state.update({key: full_optimizer_state_dict(self.owners[key], getattr(opt, "optimizer", opt))
                          for key, opt in self.method.optimizers.items()})
        else:
            state = {key: self.method.export_weights(key, self.module(key).state_dict()) for key in self.method.modules}
            state.update({key: ema.state_dict() for key, ema in self.emas.items()})
            state.update({key: opt.state_dict() for key, opt in self.method.optimizers.items()})
        state.update(args=args, steps=self.steps, rng=rngs, data=dict(self.data), **self.method.extra_state())
        if self.method.sampling_record:
            state["sampling_record"] = self.method.sampling_record
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, logger=None, weights_only: bool = False) -> None:
        """Resume exactly from ``state_dict``'s output (RNG only when the process count is the same);
        ``weights_only``: the modules, EMAs and optimizer states only, for a fresh run that starts from them."""
        if self.shard:
            from training.sharding import load_full_optimizer_state_dict, load_full_state_dict
        for key in self.method.modules:
            weights = self.method.import_weights(key, state[key])
            if self.shard:
                load_full_state_dict(self.module(key), weights)
            else:
                self.module(key).load_state_dict(weights)
        for key, ema in self.emas.items():
            if self.shard:
                load_full_state_dict(ema, state[key])
            else:
                ema.load_state_dict(state[key])
        for key, opt in self.method.optimizers.items():
            if key not in state:  # e.g. a released checkpoint without this optimizer: fresh moments
                if logger is not None:
                    logger.info(f"the checkpoint has no {key}: that optimizer starts afresh")
                continue
            fused = [group.get("fused") for group in opt.param_groups]
            if self.shard:
                load_full_optimizer_state_dict(self.owners[key], getattr(opt, "optimizer", opt), state[key])
            else:
                opt.load_state_dict(state[key])
            for group, flag in zip(opt.param_groups, fused):  # the kernel is this run's choice, not the saved one
                group["fused"] = flag
        if weights_only:
            return
        if self.accelerator.scaler is not None and "scaler" in state:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.method.load_extra_state(state)
        self.steps, self.data = state["steps"], dict(state.get("data") or {"epoch": 0, "position": 0})
        rngs, world = state.get("rng") or [], self.accelerator.num_processes
        if len(rngs) == world:
            ckpt_io.set_rng_state(rngs[self.accelerator.process_index])
        elif logger is not None:
            logger.info(f"checkpoint has RNG state for {len(rngs)} processes, not {world}: "
                        "continuing with fresh random streams (not bit-exact)")

    def gathered(self, key: str) -> torch.nn.Module:
        """EMA ``key`` (or the module the method samples, ``sampled``) as a whole network on every process, to
        sample from. With sharding its weights are all-gathered into an unsharded copy, so every process
        must call it."""
        source = self.emas[key] if key in self.emas else self.module(key)
        if not self.shard:
            return source
        from training.sharding import gathered_state_dict

        self.full[key].load_state_dict(gathered_state_dict(source))
        return self.full[key].to(self.accelerator.device)

    def init_emas(self) -> None:
        """A fresh run: every EMA starts as a copy of its module."""
        for key, (src, _) in self.method.emas.items():
            update_ema(self.emas[key], self.module(src), decay=0)

    def save(self, path: Path, args: dict, export=None) -> Path:
        """Write a checkpoint atomically (main process) after checking that no loss went non-finite;
        ``export(state)`` also writes it in another layout there."""
        self.check_finite()
        state = self.state_dict(args)
        if self.accelerator.is_main_process:
            ckpt_io.save_atomic(state, path)
            if export is not None:
                export(state)
        self.accelerator.wait_for_everyone()
        self.saved.append((self.steps, path))
        return path

    def check_finite(self) -> None:
        """One host sync: stop with ``NonFiniteLoss`` if any loss so far was not finite."""
        first = int(self.accelerator.reduce(self.first_bad, reduction="max"))
        if first >= 0:
            before = [path for step, path in self.saved if step < first]
            raise NonFiniteLoss(first, before[-1] if before else None)

    # ----- the loop -----
    def batches(self, loader, sampler, local_batch: int) -> Iterator:
        """Micro-batches across epochs from the saved epoch and position on; the position advances as
        they are taken, so a checkpoint after an epoch's last step resumes at the next epoch."""
        while True:
            sampler.set_epoch(self.data["epoch"])
            sampler.start = self.data["position"]
            for batch in loader:
                self.data["position"] += local_batch
                yield batch
            self.data.update(epoch=self.data["epoch"] + 1, position=0)

    def train(self, batches: Iterable, total: int, *, log_every: int, log: Callable[[dict], None],
              every: dict[int, list[Callable[[int], None]]], global_batch: int, flops_per_sample: float | None = None,
              mixed_precision: str = "no") -> None:
        """Train until step ``total``. ``log(record)`` receives a record every ``log_every`` steps;
        ``every[n]`` lists callables run with the step every ``n`` steps and at the last one (in
        insertion order: checkpoints before evaluations)."""
        from tqdm.auto import tqdm

        accel, batches = self.accelerator, iter(batches)
        peak = peak_flops(accel.device, mixed_precision)
        bar = tqdm(total=total, initial=self.steps, disable=not accel.is_main_process, desc="train", unit="step",
                   dynamic_ncols=True, file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 30)
        running, counts, log_steps, t0 = {}, {}, 0, time.time()
        try:
            while self.steps < total:
                for k, v in self.one_step(batches).items():  # a loss of some steps only averages over those
                    running[k] = running.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                self.steps += 1
                log_steps += 1
                bar.update(1)
                if self.steps % log_every == 0 or self.steps == total:
                    self.check_finite()
                    dt = time.time() - t0
                    rec = {"step": self.steps, **{k: accel.reduce(v / counts[k], reduction="mean").item()
                                                  for k, v in running.items()},
                           "steps_per_sec": log_steps / dt, "images_per_sec": log_steps * global_batch / dt,
                           "epoch": self.data["epoch"], "lr": self.current_lr()}
                    rec["mfu"] = mfu(rec["images_per_sec"], flops_per_sample, peak, accel.num_processes)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                    log(rec)
                    running, counts, log_steps, t0 = {}, {}, 0, time.time()
                for period, hooks in every.items():
                    if period and (self.steps % period == 0 or self.steps == total):
                        for hook in hooks:
                            hook(self.steps)
        finally:
            bar.close()

    def one_step(self, batches: Iterator) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's losses (device tensors,
        each the mean over the micro-batches that reported it) and updates the EMAs."""
        sums, counts = {}, {}
        for micro in range(self.grad_accum):
            self.syncing = micro == self.grad_accum - 1
            with ExitStack() as stack:
                for module in self.method.modules.values():  # reduce gradients once per step, on the last
                    if self.shard:
                        module.set_requires_gradient_sync(self.syncing)
                    elif not self.syncing:
                        stack.enter_context(self.accelerator.no_sync(module))
                losses = self.method.train_step(self, next(batches))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
                counts[k] = counts.get(k, 0) + 1
        if self.shard:  # a forward without backward leaves FSDP's root unsharded
            for module in self.method.modules.values():
                module.reshard()
        for key, (src, decay) in self.method.emas.items():
            update_ema(self.emas[key], self.module(src), decay)
        self.first_bad = torch.where((self.first_bad < 0) & ~self.ok, self.steps + 1, self.first_bad)
        return {k: v / counts[k] for k, v in sums.items()}

    def current_lr(self) -> float:
        opt = next(iter(self.method.optimizers.values()))
        return opt.param_groups[0]["lr"]
