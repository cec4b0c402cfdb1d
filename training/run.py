"""Run folders: ``results/NNN-<model>/`` (DiT) or ``{results-dir}/{exp-name}/`` (REPA), planned before
anything is written, then opened with ``log.txt``, ``args.json``, the trackers and the records a resumed run
keeps. What a folder holds, read back, is ``training/results.py``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.checkpoint import latest_checkpoint, remove_partial_writes, write_text_atomic


def checkpoint_dir(overfit: bool = False) -> str:
    """The run folder's checkpoint sub-folder: ``checkpoints_overfit`` for overfit runs, so they never
    mix with (or resume from) real training."""
    return "checkpoints_overfit" if overfit else "checkpoints"


def create_run_dir(results_dir: str | Path, model_name: str, exp_name: str | None = None,
                   ckpt_subdir: str = "checkpoints") -> Path:
    """A new numbered run folder ``{results_dir}/{index:03d}-{model}`` (DiT's naming), or
    ``{results_dir}/{exp_name}`` when the run is named (REPA's ``--exp-name``)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    indices = [int(p.name.split("-", 1)[0]) for p in results_dir.iterdir()
               if p.is_dir() and p.name.split("-", 1)[0].isdigit()]
    run_dir = results_dir / (exp_name or f"{max(indices, default=-1) + 1:03d}-{model_name.replace('/', '-')}")
    (run_dir / ckpt_subdir).mkdir(parents=True, exist_ok=bool(exp_name))
    (run_dir / "samples").mkdir(exist_ok=bool(exp_name))
    return run_dir


@dataclass
class RunFolder:
    """Where a run will write, decided before anything is written (``plan_run_folder``)."""

    results_dir: Path
    model_name: str
    name: str | None = None       # a named folder (REPA's --exp-name); None: the next numbered one
    continues: Path | None = None  # an existing run folder that this run continues in
    source: Path | None = None     # a run folder whose records up to ``step`` the new folder starts with
    step: int = 0

    def open(self, checkpoint_subdir: str) -> tuple[Path, str | None]:
        """Create (or prepare) the folder; returns it and a line for the log when it is not a fresh start."""
        if self.continues is not None:
            keep_records_until(self.continues, self.continues, self.step)
            removed = remove_partial_writes(self.continues / checkpoint_subdir)
            note = f"continuing {self.continues} from step {self.step}"
            return self.continues, note + (f"; removed {len(removed)} partial checkpoint write(s)" if removed else "")
        run_dir = create_run_dir(self.results_dir, self.model_name, self.name, checkpoint_subdir)
        if self.source is None:
            note = f"continuing a checkpoint from outside any run folder at step {self.step}"
            return run_dir, note if self.step else None
        keep_records_until(self.source, run_dir, self.step)
        return run_dir, (f"continuing {self.source} from step {self.step} in a new run folder: that run has later "
                         "checkpoints, which stay as they are")


def plan_run_folder(results_dir: str | Path, model_name: str, exp_name: str | None, resume: Path | None,
                    step: int, checkpoint_subdir: str) -> RunFolder:
    """Decide where a run writes, refusing in one line a named folder that already holds another run.

    Without ``resume``: a new folder. Resuming the newest checkpoint of a run folder: that folder.
    Any other checkpoint (an older one, or a file outside any run folder): a new folder, which starts
    with the records of the checkpoint's run up to its step; the old folder is never modified.
    """
    plan = RunFolder(Path(results_dir), model_name, exp_name, step=step)
    source = run_folder_of(resume) if resume is not None else None
    if source is not None:
        newest = latest_checkpoint(source, checkpoint_subdir)
        if newest is not None and newest.resolve() == Path(resume).resolve():
            plan.continues = source
            return plan
        plan.source = source
        if exp_name and source.resolve() == (Path(results_dir) / exp_name).resolve():
            plan.name = f"{exp_name}-from-{step:07d}"
    if plan.name is not None:
        existing = latest_checkpoint(Path(results_dir) / plan.name, checkpoint_subdir)
        if existing is not None:
            hint = f"--resume-step {int(existing.stem)}" if resume is None else "--resume with its newest checkpoint"
            raise ValueError(f"{Path(results_dir) / plan.name} already holds checkpoints (newest {existing.name}); "
                             f"continue it with {hint}, or choose another --exp-name")
    return plan


RECORD_FILES = ("metrics.jsonl", "proxy_metrics.jsonl", "inception_metrics.jsonl")  # one JSON line per step


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``RUN/checkpoints*/NNNNNNN.pt`` beside ``RUN/args.json``), or None
    for a checkpoint that lies anywhere else."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    if checkpoint.parent.name in CHECKPOINT_DIRS and (run_dir / "args.json").is_file():
        return run_dir
    return None


def keep_records_until(source: Path, target: Path, step: int) -> None:
    """Write into ``target`` the records of ``source`` up to ``step`` (the same folder: the later ones are
    dropped, as training redoes those steps), and ``proxy_metrics.json`` as the last proxy record kept."""
    for name in RECORD_FILES:
        if not (Path(source) / name).is_file():
            continue
        lines = Path(source, name).read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(Path(target) / name, "".join(line + "\n" for line in kept))
        if name == "proxy_metrics.jsonl":
            latest = Path(target) / "proxy_metrics.json"
            if kept:
                write_text_atomic(latest, json.dumps(json.loads(kept[-1]), indent=2) + "\n")
            else:
                latest.unlink(missing_ok=True)


def create_logger(run_dir: Path | None, is_main: bool = True) -> logging.Logger:
    """Log to stdout and ``run_dir/log.txt`` on the main process; silent elsewhere."""
    logger = logging.getLogger("diffusion-lab")
    logger.handlers.clear()
    logger.propagate = False
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    return logger


def open_run(accelerator, run_folder: RunFolder, ckpt_subdir: str, record: dict, data: str, tracker_note: str | None,
             trackers, exp_name: str | None = None) -> tuple[Path, logging.Logger]:
    """Open the planned run folder (on the main process), write ``record`` to ``args.json``, start the log and
    the trackers (``training.fit.Trackers``: their files in ``{run folder}/{logging_dir}``, default the run
    folder; the project, default the run's name); every process gets the folder and a logger. ``data``
    describes the training data for the first log line."""
    from accelerate.utils import gather_object

    is_main = accelerator.is_main_process
    run_dir, note = run_folder.open(ckpt_subdir) if is_main else (None, None)
    run_dir = Path(gather_object([str(run_dir) if is_main else ""])[0])
    logger = create_logger(run_dir, is_main)
    if is_main:
        save_args(run_dir, record)
    logger.info(f"run folder {run_dir}; {accelerator.num_processes} process(es) on {accelerator.device}; data: {data}")
    for line in (note, tracker_note):
        if line:
            logger.info(line)
    if trackers.report_to != "none":
        tracker_dir = run_dir / trackers.logging_dir if trackers.logging_dir else run_dir
        tracker_dir.mkdir(parents=True, exist_ok=True)
        accelerator.project_configuration.project_dir = str(run_dir)
        accelerator.project_configuration.logging_dir = str(tracker_dir)
        accelerator.init_trackers(trackers.project or exp_name or run_dir.name,
                                  config={k: str(v) for k, v in record.items()},
                                  init_kwargs={"wandb": {"dir": str(tracker_dir), **trackers.wandb}})
    return run_dir, logger


def save_args(run_dir: Path, record: dict) -> None:
    (Path(run_dir) / "args.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


CHECKPOINT_DIRS = (checkpoint_dir(False), checkpoint_dir(True))
