"""Methods side by side over seeds: class accuracy and proxy FD against steps (``make demo-repa``).

  python evaluations/repa_report.py --out results/demo-repa \\
      --method "SiT=results/demo-repa/sit-0,results/demo-repa/sit-1,results/demo-repa/sit-2" \\
      --method "REPA=results/demo-repa/repa-0,..." --method "REG=..."

Each ``--method`` names the run folders of its seeds (``train.py --eval-every`` writes ``proxy_metrics.jsonl`` in
each). The first method is the baseline. Writes ``curves.png`` (every seed thin, the mean thick) and ``report.md``:
mean and standard error over seeds at every scored step, each seed's last score, and for every other method whether
it beats the baseline at the last step: every seed above every baseline seed, or a mean gap above two standard
errors (the errors of both means, in quadrature).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402

METRICS = (("class_accuracy", "class accuracy", ".3f"), ("proxy_fd", "proxy FD", ".1f"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--method", action="append", required=True, metavar="NAME=DIR,DIR,...",
                   help="a method and its seeds' run folders (repeat; the first is the baseline)")
    p.add_argument("--encoder-probe", default=None,
                   help="the encoder's linear probe (python -m methods.ssl_encoder --json), quoted in the report")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def read_curve(run_dir: Path) -> dict[int, dict]:
    """The last proxy record of every scored step of one run."""
    path = run_dir / "proxy_metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} is missing: train the run with --eval-every (train.py writes it)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records}


def read_method(spec: str) -> tuple[str, list[dict[int, dict]]]:
    name, _, dirs = spec.partition("=")
    if not name or not dirs:
        raise ValueError(f"--method {spec}: expected NAME=DIR[,DIR...]")
    curves = [read_curve(Path(d)) for d in dirs.split(",")]
    steps = set(curves[0])
    if any(set(c) != steps for c in curves):
        raise ValueError(f"--method {name}: its seeds were scored at different steps; train them alike")
    return name, curves


def stats(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def verdict(method: list[float], baseline: list[float]) -> str:
    """Whether ``method``'s last accuracies beat the baseline's, in the issue's two senses."""
    (m, se_m), (b, se_b) = stats(method), stats(baseline)
    gap, two_se = m - b, 2 * float(np.hypot(se_m, se_b))
    every = min(method) > max(baseline)
    beats = every or gap > two_se
    return (f"gap {gap:+.3f}, two standard errors {two_se:.3f}; every seed above every baseline seed: "
            f"{'yes' if every else 'no'} -> **{'beats' if beats else 'does not beat'}**")


def table(methods, key: str, fmt: str) -> list[str]:
    steps = sorted(methods[0][1][0])
    lines = ["| method | " + " | ".join(f"step {s}" for s in steps) + " | last, per seed |",
             "| --- | " + " | ".join("---" for _ in steps) + " | --- |"]
    for name, curves in methods:
        cells = [stats([c[s][key] for c in curves]) for s in steps]
        seeds = ", ".join(format(c[steps[-1]][key], fmt) for c in curves)
        lines.append(f"| {name} | " + " | ".join(f"{m:{fmt}} ± {se:{fmt}}" for m, se in cells) + f" | {seeds} |")
    return lines


def plot(methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, curves), colour in zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        steps = sorted(curves[0])
        for ax, (key, title, _) in zip(axes, METRICS):
            values = np.array([[c[s][key] for s in steps] for c in curves])
            for row in values:
                ax.plot(steps, row, color=colour, alpha=0.35, linewidth=0.8)
            ax.plot(steps, values.mean(0), color=colour, linewidth=2, marker="o", label=f"{name} ({len(curves)} seeds)")
            ax.set_title(title)
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    methods = [read_method(spec) for spec in args.method]
    steps = sorted(methods[0][1][0])
    if any(sorted(curves[0]) != steps for _, curves in methods):
        raise ValueError("the methods were scored at different steps; train them with the same --eval-every")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = methods[0][1][0][steps[-1]]
    lines = [f"# {' vs '.join(name for name, _ in methods)}", "",
             f"Proxy metrics of {first['samples']} EMA samples per seed and step (sampler {first['sampler']}, "
             f"cfg {first['cfg_scale']:g}); mean ± standard error over seeds. Real images score "
             f"{first['real_class_accuracy']:.3f} and {first['real_proxy_fd']:.1f} at this sample count.", ""]
    if args.encoder_probe:
        probe = json.loads(Path(args.encoder_probe).read_text())
        lines += ["Linear probe of the aligned-to encoder (mean-pooled patch tokens, 10 classes): " +
                  ", ".join(f"{name} {acc:.3f}" for name, acc in probe.items()) + ".", ""]
    for key, title, fmt in METRICS:
        lines += [f"## {title}", "", *table(methods, key, fmt), ""]
    base_name, base = methods[0]
    lines += [f"## Against {base_name} (class accuracy at step {steps[-1]})", ""]
    for name, curves in methods[1:]:
        acc = [c[steps[-1]]["class_accuracy"] for c in curves]
        lines.append(f"- {name}: " + verdict(acc, [c[steps[-1]]["class_accuracy"] for c in base]))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot(methods, out / "curves.png")
    print("\n".join(lines))
    print(f"wrote {out / 'report.md'} and {out / 'curves.png'}")


if __name__ == "__main__":
    run_cli(main, parse_args())
