"""Run folders and logging: ``results/NNN-<model>/`` with ``log.txt``, ``args.json``,
``checkpoints/`` (``checkpoints_overfit/``), ``samples/`` and the training curves; and what a
results folder holds, for ``make status``, ``make generate`` and ``make monitor``:

  python -m training.run status [results]   # every run: model, steps, last loss, checkpoints
  python -m training.run newest [results]   # path of the newest checkpoint (any run, any mode)
  python -m training.run log [results]      # path of the newest run's log.txt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


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
    if exp_name:
        run_dir = results_dir / exp_name
        (run_dir / ckpt_subdir).mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        return run_dir
    indices = [int(p.name.split("-", 1)[0]) for p in results_dir.iterdir()
               if p.is_dir() and p.name.split("-", 1)[0].isdigit()]
    index = max(indices, default=-1) + 1
    run_dir = results_dir / f"{index:03d}-{model_name.replace('/', '-')}"
    (run_dir / ckpt_subdir).mkdir(parents=True)
    (run_dir / "samples").mkdir()
    return run_dir


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


def save_args(run_dir: Path, args) -> None:
    (Path(run_dir) / "args.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")


CHECKPOINT_DIRS = (checkpoint_dir(False), checkpoint_dir(True))


def checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints (training and overfit), oldest step first."""
    found = [p for sub in CHECKPOINT_DIRS for p in Path(run_dir, sub).glob("[0-9]*.pt")]
    return sorted(found, key=lambda p: (int(p.stem), p.parent.name))


def runs(results_dir: str | Path) -> list[Path]:
    """Run folders (those holding ``args.json``), by name."""
    root = Path(results_dir)
    return sorted(p.parent for p in root.glob("*/args.json")) if root.is_dir() else []


def newest_checkpoint(results_dir: str | Path) -> Path:
    """The most recently written checkpoint of any run under ``results_dir``."""
    found = [c for run in runs(results_dir) for c in checkpoints(run)]
    if not found:
        raise ValueError(f"no checkpoints under {results_dir}/*/checkpoints*/; train first (make train, make overfit "
                         "or make quick-test) or pass a checkpoint to sample.py --ckpt")
    return max(found, key=lambda p: (p.stat().st_mtime, int(p.stem)))


def last_record(run_dir: Path) -> dict:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines() if Path(run_dir, "metrics.jsonl").exists() else []
    return json.loads(lines[-1]) if lines else {}


def status(results_dir: str | Path) -> str:
    """One block per run: model, mode, last logged step and loss, checkpoints, reports."""
    found = runs(results_dir)
    if not found:
        return f"no runs under {results_dir}/"
    lines = []
    for run in found:
        args = json.loads(Path(run, "args.json").read_text())
        rec, ckpts = last_record(run), checkpoints(run)
        mode = f"overfit ({args.get('samples')} per class)" if args.get("overfit") else "training"
        loss = f"loss {rec['loss']:.4g} at step {rec['step']}" if "loss" in rec else "no step logged yet"
        lines.append(f"{run.name}: {args.get('model')} {args.get('image_size')}px on {args.get('dataset') or 'data'}, "
                     f"{mode}; {loss}")
        lines.append(f"  checkpoints: {', '.join(f'{c.parent.name}/{c.name}' for c in ckpts) or 'none'}")
        for report in ("proxy_metrics.json", "overfit_report.json"):
            if Path(run, report).exists():
                values = json.loads(Path(run, report).read_text())
                shown = {k: v for k, v in values.items() if isinstance(v, float) and k != "cfg_scale"}
                lines.append(f"  {report}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Runs and checkpoints in a results folder")
    p.add_argument("command", choices=["status", "newest", "log"])
    p.add_argument("results_dir", nargs="?", default="results")
    args = p.parse_args(argv)
    try:
        if args.command == "status":
            print(status(args.results_dir))
        elif args.command == "newest":
            print(newest_checkpoint(args.results_dir))
        else:
            found = runs(args.results_dir)
            if not found:
                raise ValueError(f"no runs under {args.results_dir}/")
            print(max((r / "log.txt" for r in found), key=lambda p: p.stat().st_mtime if p.exists() else 0))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
