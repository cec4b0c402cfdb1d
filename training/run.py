"""Run folders and logging: ``results/NNN-<model>/`` with ``log.txt``, ``args.json``,
``checkpoints/``, ``samples/`` and the training curves."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def create_run_dir(results_dir: str | Path, model_name: str, exp_name: str | None = None) -> Path:
    """A new numbered run folder ``{results_dir}/{index:03d}-{model}`` (DiT's naming), or
    ``{results_dir}/{exp_name}`` when the run is named (REPA's ``--exp-name``)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if exp_name:
        run_dir = results_dir / exp_name
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        return run_dir
    indices = [int(p.name.split("-", 1)[0]) for p in results_dir.iterdir()
               if p.is_dir() and p.name.split("-", 1)[0].isdigit()]
    index = max(indices, default=-1) + 1
    run_dir = results_dir / f"{index:03d}-{model_name.replace('/', '-')}"
    (run_dir / "checkpoints").mkdir(parents=True)
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
