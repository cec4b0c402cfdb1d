"""Side by side: a teacher and the generators distilled from it (``make demo-dmd2``).

  python evaluations/dmd2_report.py --out results/demo-dmd2 \\
      --run "teacher (DDPM 50, cfg 4)=results/demo-dmd2/samples/teacher.npz" \\
      --run "one-step=results/demo-dmd2/samples/one-step.npz" --run "four-step=..."

Each ``--run`` names the ``.npz`` that ``generate.py --proxy`` wrote (its metrics are the ``.json`` beside it).
Writes ``report.md`` (proxy class accuracy and Frechet distance of each, and each one's accuracy as a fraction of
the first run's) and ``samples.png`` (the first four samples of every class, fewer if a class has fewer, a block of rows per
run, in ``--run`` order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402
from common.monitor import save_grid  # noqa: E402

PER_CLASS = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--run", action="append", required=True, metavar="NAME=NPZ",
                   help="a sample file of generate.py --proxy (repeat; the first is the reference)")
    p.add_argument("--dataset", default=None, help="builtin: name the rows by the built-in classes")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def read_run(spec: str) -> tuple[str, np.ndarray, np.ndarray, dict]:
    name, _, path = spec.rpartition("=")
    npz, metrics = Path(path), Path(path).with_suffix(".json")
    if not name or not npz.is_file() or not metrics.is_file():
        raise ValueError(f"--run {spec}: expected NAME=samples.npz with its metrics .json beside it "
                         "(generate.py --proxy writes both)")
    with np.load(npz) as data:
        return name, data["arr_0"], data["arr_1"], json.loads(metrics.read_text())


def main(args: argparse.Namespace) -> None:
    runs = [read_run(spec) for spec in args.run]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reference = runs[0][3]["proxy_class_accuracy"]
    lines = ["| run | samples | proxy class accuracy | of the first | proxy FD |", "| --- | --- | --- | --- | --- |"]
    for name, images, _, m in runs:
        acc = m["proxy_class_accuracy"]
        lines.append(f"| {name} | {len(images)} | {acc:.3f} | {acc / reference:.0%} | {m['proxy_fd']:.1f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    from imagedata import class_names

    per = min(PER_CLASS, *(np.bincount(labels)[np.unique(labels)].min() for _, _, labels, _ in runs))
    blocks, names = [], []
    for name, images, labels, _ in runs:
        classes = class_names(args.dataset, int(labels.max()) + 1)
        for c in np.unique(labels):
            chosen = images[labels == c][:per]
            blocks.append(torch.from_numpy(chosen).permute(0, 3, 1, 2).float() / 127.5 - 1)
            names.append(f"{name}: {classes[c] if c < len(classes) else c}")
    save_grid(torch.cat(blocks), out / "samples.png", nrow=per, row_labels=names)
    print("\n".join(lines))
    print(f"wrote {out / 'report.md'} and {out / 'samples.png'}")


if __name__ == "__main__":
    run_cli(main, parse_args())
