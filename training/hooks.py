"""What a run does around the engine's steps, for any method whose EMA network samples (``ema``):
the log record (``metrics.jsonl``, ``loss.png``, trackers), checkpoints with their sample grid, the
evaluations (proxy metrics on the built-in dataset, ADM's metrics against a reference), and at the
end the overfit report and the summary of the run folder."""

from __future__ import annotations

from pathlib import Path

import torch

from training.monitor import MetricsLog
from training.overfit import overfit_report
from training.run import summary
from training.visual import InceptionCurve, evaluate_builtin, grid_labels, sample_grid


def format_record(rec: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if v is not None)


class RunHooks:
    """Callbacks for ``Engine.train``; ``data`` is the (overfit) dataset for the overfit report."""

    def __init__(self, engine, args, run_dir: Path, ckpt_subdir: str, logger, codec, names: list[str], kind: str,
                 data):
        self.engine, self.args, self.run_dir, self.logger, self.codec = engine, args, Path(run_dir), logger, codec
        self.ckpt_subdir, self.names, self.kind, self.data = ckpt_subdir, names, kind, data
        self.accelerator, method = engine.accelerator, engine.method
        self.sampling = method.sampling
        self.channels, self.size = method.model_kwargs["in_channels"], method.model_kwargs["input_size"]
        self.is_main = self.accelerator.is_main_process
        self.metrics = MetricsLog(run_dir) if self.is_main else None
        self.grid_y, self.grid_nrow = self.grid_layout(args)
        self.grid_noise = torch.randn(len(self.grid_y), self.channels, self.size, self.size,
                                      generator=torch.Generator().manual_seed(args.global_seed))
        self.inception = InceptionCurve(args.eval_ref, self.accelerator.device, args.inception_weights) \
            if args.eval_ref else None

    def grid_layout(self, args) -> tuple[torch.Tensor, int]:
        """The sample grid's conditions (labels) and row length."""
        return grid_labels(args.num_classes)

    def ema(self) -> torch.nn.Module:
        """The EMA network to sample from (gathered from its shards with ``--fsdp``: every process calls this)."""
        return self.engine.gathered("ema")

    def log(self, rec: dict) -> None:
        self.logger.info(format_record(rec))
        if self.is_main:
            self.metrics.log(rec)
            self.metrics.plot()
        self.accelerator.log({k: v for k, v in rec.items() if v is not None}, step=rec["step"])

    def checkpoint(self, step: int) -> None:
        """Save, then draw the EMA's sample grid (``train.py``: one grid per checkpoint)."""
        self.save(step)
        self.grid(step)

    def save(self, step: int) -> None:
        path = self.engine.save(self.run_dir / self.ckpt_subdir / f"{step:07d}.pt", vars(self.args))
        if self.is_main:
            self.logger.info(f"saved checkpoint {path}")

    def grid(self, step: int) -> None:
        """``samples/{step}.png``: the EMA's samples of fixed noise, one row per class."""
        ema = self.ema()
        if self.is_main:
            device = self.accelerator.device
            sample_grid(ema, self.codec, self.grid_noise.to(device), self.grid_y.to(device),
                        self.args.num_classes, self.run_dir / "samples" / f"{step:07d}.png", nrow=self.grid_nrow,
                        names=self.names, **self.sampling)
        self.accelerator.wait_for_everyone()

    def evaluate(self, step: int) -> None:
        args, accel = self.args, self.accelerator
        scored = dict(num_samples=args.eval_samples, cfg_scale=args.eval_cfg_scale,
                      sampling_steps=args.eval_sampling_steps, **self.sampling)
        ema = self.ema()
        if self.inception is not None:
            result = self.inception(ema, self.codec, self.channels, self.size, args.num_classes, self.run_dir,
                                    step, rank=accel.process_index, world=accel.num_processes, **scored)
            self.report("ADM metrics", step, result)
        if self.is_main and self.kind == "builtin":
            result = evaluate_builtin(ema, self.codec, self.channels, self.size, args.num_classes,
                                      accel.device, self.run_dir, step, **scored)
            self.report("proxy metrics", step, result)
        accel.wait_for_everyone()

    def report(self, what: str, step: int, result: dict) -> None:
        self.logger.info(f"step {step}: {what} of {self.args.eval_samples} EMA samples: {format_record(result)}")
        self.accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=step)

    def finish(self) -> None:
        """The overfit report (``--overfit``) and the lines the run ends with."""
        args, steps = self.args, self.engine.steps
        ema = self.ema() if args.overfit else None
        if args.overfit and self.is_main:
            report = overfit_report(ema, self.codec, self.data, args.num_classes, self.run_dir, steps,
                                    args.eval_cfg_scale, args.eval_sampling_steps, builtin=self.kind == "builtin",
                                    names=self.names, **self.sampling)
            self.logger.info(f"overfit report (EMA samples vs their training images): {format_record(report)}")
        for line in summary(self.run_dir, steps, args.num_classes) if self.is_main else []:
            self.logger.info(line)
