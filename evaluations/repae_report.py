"""Side by side: REPA-E end-to-end runs and frozen-VAE runs from the same starting VAE (``make demo-repae``).

  python evaluations/repae_report.py --data-dir results/demo-repae/data \\
      --start-vae results/demo-repae/pretrained/tiny-vae/tiny-vae.pt --vae-arch tiny-f4d4 \\
      --run e2e=results/demo-repae/e2e --run frozen=results/demo-repae/frozen --out results/demo-repae

Reads each run's newest checkpoint, its ``metrics.jsonl`` and the proxy metrics generate.py wrote
(``*.json`` next to the samples, ``--samples-dir``). Writes ``reconstructions.png`` (rows: real images,
the starting VAE's reconstructions, then each run's VAE: the tuned one of an end-to-end run, the
frozen ``--vae-ckpt`` of a ``train_ldm_only.py`` run), ``samples.png`` (each run's last EMA sample grid, one above the other, each decoded
by its own VAE), ``losses.png`` (each run's denoising and reconstruction losses) and ``report.md`` (the
table of reconstruction error and proxy metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from common.cli import first_paragraph, run_cli  # noqa: E402
from common.monitor import save_grid  # noqa: E402
from imagedata.h5 import H5Images  # noqa: E402
from models.vae import VAE_models, load_vae_weights  # noqa: E402

RECONSTRUCTED = 64  # the last images of the set (seen in training, as every image is)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--data-dir", required=True, help="holds images.h5")
    p.add_argument("--start-vae", required=True, help="the VAE both runs started from")
    p.add_argument("--vae-arch", default="tiny-f4d4", choices=list(VAE_models))
    p.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER", help="a run folder (repeat)")
    p.add_argument("--samples-dir", default=None, help="where generate.py wrote the runs' samples and metrics")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


@torch.no_grad()
def reconstruct(vae_source, arch: str, images: torch.Tensor) -> torch.Tensor:
    vae = VAE_models[arch]()
    load_vae_weights(vae, vae_source)
    return vae.eval().decode(vae.encode(images).mean).clamp(-1, 1)


def proxy_metrics(samples_dir: Path | None, ckpt: Path) -> dict:
    """The metrics generate.py wrote for ``ckpt``'s samples: the newest ``.json`` whose sample folder names
    this checkpoint (its file name and the start of its sha256)."""
    if samples_dir is None:
        return {}
    from models.weights import sha256_of

    tag = f"-{ckpt.stem}-{sha256_of(ckpt)[:8]}-"
    found = sorted((p for p in samples_dir.glob("*.json") if tag in p.name), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else {}


def main(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    dataset = H5Images(args.data_dir)
    indices = range(max(0, len(dataset) - RECONSTRUCTED), len(dataset))
    images = torch.stack([torch.from_numpy(dataset.image(i).copy()) for i in indices]).float() / 127.5 - 1
    rows, table = [images[:8], reconstruct(args.start_vae, args.vae_arch, images)[:8]], []
    start_l1 = (reconstruct(args.start_vae, args.vae_arch, images) - images).abs().mean().item()
    curves = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        ckpt_path = latest_checkpoint(Path(folder), "checkpoints")
        if ckpt_path is None:
            raise ValueError(f"--run {spec}: no checkpoints/NNNNNNN.pt in {folder}")
        ckpt = load_checkpoint(ckpt_path)
        vae_source = ckpt["vae"] if "vae" in ckpt else (ckpt.get("args") or {}).get("vae_ckpt") or args.start_vae
        recon = reconstruct(vae_source, args.vae_arch, images)
        rows.append(recon[:8])
        metrics = proxy_metrics(Path(args.samples_dir) if args.samples_dir else None, ckpt_path)
        table.append((name, ckpt["steps"], (recon - images).abs().mean().item(), metrics.get("proxy_class_accuracy"),
                      metrics.get("proxy_fd")))
        records = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line]
        curves[name] = records
    save_grid(torch.cat(rows), out / "reconstructions.png", nrow=8,
              row_labels=["real", "start VAE"] + [spec.partition("=")[0] for spec in args.run])
    stack_grids([(spec.partition("=")[0], Path(spec.partition("=")[2])) for spec in args.run], out / "samples.png")
    plot_losses(curves, out / "losses.png")
    lines = [f"| run | steps | reconstruction L1 (last {len(indices)} images) | proxy class accuracy | proxy FD |",
             "|---|---|---|---|---|",
             f"| start VAE | 0 | {start_l1:.4f} | | |"]
    lines += [f"| {n} | {s} | {l1:.4f} | {fmt(acc)} | {fmt(fd)} |" for n, s, l1, acc, fd in table]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'report.md'}, {out / 'reconstructions.png'}, {out / 'losses.png'}")
    return out / "report.md"


def stack_grids(runs: list[tuple[str, Path]], path: Path) -> None:
    """Each run's newest ``samples/*.png`` one above the other, its name on top."""
    from PIL import Image, ImageDraw

    grids = []
    for name, folder in runs:
        found = sorted((folder / "samples").glob("*.png"))
        if found:
            grids.append((name, Image.open(found[-1]).convert("RGB")))
    if not grids:
        return
    width, label = max(g.width for _, g in grids), 14
    canvas = Image.new("RGB", (width, sum(g.height + label for _, g in grids)), "white")
    y = 0
    for name, grid in grids:
        ImageDraw.Draw(canvas).text((2, y + 1), name, fill="black")
        canvas.paste(grid, (0, y + label))
        y += grid.height + label
    canvas.save(path)


def fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def plot_losses(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, records in curves.items():
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r.get("denoise") for r in records], label=name)
        if any("vae_rec" in r for r in records):
            axes[1].plot(steps, [r.get("vae_rec") for r in records], label=name)
    axes[0].set(title="SiT denoising loss (each run's own latent space)", xlabel="step")
    axes[1].set(title="VAE reconstruction L1 (end-to-end run)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run_cli(main, parse_args())
