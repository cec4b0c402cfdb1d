"""What a results folder holds, read back: the lines a run ends with, and for ``make status``, ``make generate``
and ``make monitor``:

  python -m training.results status [results]   # every run: model, steps, last loss, checkpoints
  python -m training.results newest [results]   # path of the newest checkpoint (any run, any mode)
  python -m training.results log [results]      # path of the newest run's log.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.run import CHECKPOINT_DIRS

RUN_FILES = {  # what a person opens in a run folder, and what it shows
    "loss.png": "the training loss and learning rate against steps",
    "samples": "sample grids of fixed noise over training (the EMA's; a distilled generator's own), a row a class",
    "eval_samples.png": "the EMA samples the proxy metrics scored, one row per class",
    "overfit_samples.png": "each class's samples beside their nearest training images",
    "overfit_report.json": "pixel error of the samples to their training images",
    "inception_metrics.jsonl": "FID, sFID, IS, precision and recall over training",
}


def summary(run_dir: Path, steps: int, num_classes: int) -> list[str]:
    """The lines a run ends with: where its outputs are and what they show; the last line reads out the
    proxy metrics against chance and against real images, when the run scored any."""
    lines = [f"done after {steps:,} steps; run folder {run_dir}:"]
    lines += [f"  {name + ('/' if name == 'samples' else ''):<24}{what}" for name, what in RUN_FILES.items()
              if (Path(run_dir) / name).exists()]
    lines.append(f"  {'checkpoints*/':<24}" + ", ".join(f"{c.parent.name}/{c.name}" for c in checkpoints(run_dir)))
    proxy = Path(run_dir) / "proxy_metrics.json"
    if proxy.is_file():
        r = json.loads(proxy.read_text())
        lines.append(f"{proxy}: class accuracy {r['class_accuracy']:.3f} (chance {1 / num_classes:.2f}, real "
                     f"images {r['real_class_accuracy']:.2f}), proxy FD {r['proxy_fd']:.1f} (real images "
                     f"{r['real_proxy_fd']:.1f}; lower is better) of {r['samples']} EMA samples at step {r['step']}")
    return lines


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
