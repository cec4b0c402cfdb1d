"""What a run does around the engine's steps (``training/fit.py``), for any method: the log record
(``metrics.jsonl``, ``loss.png``, trackers), checkpoints (their naming, retention and copies), sample
grids of the network the method samples, the evaluations (proxy metrics on the built-in dataset, ADM's
metrics against a reference), and at the end the overfit report and the summary of the run folder."""

from __future__ import annotations

from pathlib import Path

import torch

from common import checkpoint as ckpt_io
from common.monitor import MetricsLog
from training.overfit import overfit_report
from training.results import summary
from training.visual import InceptionCurve, evaluate_builtin, sample_grid


def format_record(rec: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if v is not None)


class RunHooks:
    """Callbacks for ``Engine.train`` as the run spec says; ``data`` is the run's ``TrainData``."""

    def __init__(self, engine, spec, run_dir: Path, logger, data):
        self.engine, self.spec, self.run_dir, self.logger, self.data = engine, spec, Path(run_dir), logger, data
        self.accelerator, self.method = engine.accelerator, engine.method
        self.channels, self.size = self.method.model_kwargs.get("in_channels"), self.method.model_kwargs.get("input_size")
        self.num_classes = self.method.num_classes
        self.is_main = self.accelerator.is_main_process
        self.metrics = MetricsLog(run_dir) if self.is_main else None
        grids = spec.grids
        if grids.every:
            self.grid_y, self.grid_nrow = self.method.grid_conditions(grids.samples, grids.nrow)
            self.grid_noise = torch.randn(len(self.grid_y), self.channels, self.size, self.size,
                                          generator=torch.Generator().manual_seed(grids.seed))
        evaluation = spec.evaluation
        self.inception = InceptionCurve(evaluation.ref, self.accelerator.device, evaluation.inception_weights) \
            if evaluation.ref else None

    def every(self) -> dict:
        """The every-N table: checkpoints, then the grid and the evaluations of the same step."""
        table = {self.spec.checkpoints.every: [self.save]}
        table.setdefault(self.spec.grids.every, []).append(self.grid)
        table.setdefault(self.spec.evaluation.every, []).append(self.evaluate)
        return table

    def sampled(self) -> torch.nn.Module:
        """The network to sample from (gathered from its shards with ``--fsdp``: every process calls this)."""
        return self.engine.gathered(self.method.sampled)

    def log(self, rec: dict) -> None:
        self.logger.info(format_record(rec))
        if self.is_main:
            self.metrics.log(rec)
            self.metrics.plot()
        self.accelerator.log({k: v for k, v in rec.items() if v is not None}, step=rec["step"])

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step``, then apply the retention and the copies."""
        spec = self.spec.checkpoints
        if not spec.save:
            return
        exported = []
        export = (lambda state: exported.extend(spec.export(state, self.run_dir, step))) if spec.export else None
        path = self.engine.save(self.run_dir / spec.folder / spec.name(step), self.spec.record, export)
        if not self.is_main:
            return
        self.logger.info(f"saved checkpoint {path}" + "".join(f" and {p}" for p in exported))
        if spec.keep is not None:
            for stale in ckpt_io.keep_newest(path.parent, spec.keep):
                self.logger.info(f"removed {stale} (only the newest {spec.keep} stay)")
        if spec.copy_to:
            copies = Path(spec.copy_to) / self.run_dir.name
            ckpt_io.copy_atomic(path, copies / path.name)
            ckpt_io.keep_newest(copies, spec.copies_kept)
            self.logger.info(f"copied {path.name} to {copies}")

    def grid(self, step: int) -> None:
        """``samples/{step}.png``: samples of fixed noise, one row per class."""
        network = self.sampled()
        if self.is_main:
            device = self.accelerator.device
            sample_grid(lambda noise, y: self.method.grid_images(network, noise, y), self.grid_noise.to(device),
                        self.grid_y.to(device), self.run_dir / "samples" / f"{step:07d}.png", nrow=self.grid_nrow,
                        names=self.data.names)
        self.accelerator.wait_for_everyone()

    def evaluate(self, step: int) -> None:
        spec, accel = self.spec.evaluation, self.accelerator
        scored = dict(num_samples=spec.samples, cfg_scale=spec.cfg_scale, sampling_steps=spec.sampling_steps,
                      **self.method.sampling)
        network = self.sampled()
        if self.inception is not None:
            result = self.inception(network, self.method.codec, self.channels, self.size, self.num_classes,
                                    self.run_dir, step, rank=accel.process_index, world=accel.num_processes, **scored)
            self.report("ADM metrics", step, result)
        if self.is_main and self.data.kind == "builtin":
            result = evaluate_builtin(network, self.method.codec, self.channels, self.size, self.num_classes,
                                      accel.device, self.run_dir, step, **scored)
            self.report("proxy metrics", step, result)
        accel.wait_for_everyone()

    def report(self, what: str, step: int, result: dict) -> None:
        self.logger.info(f"step {step}: {what} of {self.spec.evaluation.samples} samples: {format_record(result)}")
        self.accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=step)

    def finish(self) -> None:
        """The overfit report (``--overfit``) and the lines the run ends with."""
        steps, evaluation = self.engine.steps, self.spec.evaluation
        network = self.sampled() if self.data.overfit else None
        if self.data.overfit and self.is_main:
            report = overfit_report(network, self.method.codec, self.data.dataset, self.num_classes, self.run_dir,
                                    steps, evaluation.cfg_scale, evaluation.sampling_steps,
                                    builtin=self.data.kind == "builtin", names=self.data.names, **self.method.sampling)
            self.logger.info(f"overfit report (EMA samples vs their training images): {format_record(report)}")
        for line in summary(self.run_dir, steps, max(self.num_classes, 1)) if self.is_main else []:
            self.logger.info(line)
