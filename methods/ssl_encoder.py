"""``--enc-type simclr-builtin``: a representation of the built-in images learnt without their labels, for REPA, REG
and REPA-E's alignment offline (issue 28; docs/notes/alignment-demo.md).

SimCLR (Chen et al. 2020): two random views of each image (resized crop, flip, strong colour changes: the classes are
shapes, their colours random), NT-Xent at temperature 0.2 on a projection of the mean-pooled patch tokens, which
are what REPA aligns. The ViT is ``models.encoders``'s ``simclr-builtin`` (patch 4, width 96, depth 4) at 16 px, the
demos' resolution; it is trained on first use (about 8 minutes on a 2-core CPU) on unlabelled built-in images of a
seed of its own (none of the proxy classifier's) and cached in ``$DIFFUSION_LAB_CACHE/encoders/``.

  python -m methods.ssl_encoder [--json probe.json]   # train (if absent) and report the linear probe
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import first_paragraph, run_cli

NAME = "simclr-builtin"
SEED, IMAGES, RESOLUTION = 7, 20_000, 16
STEPS, BATCH, LR, TEMPERATURE = 1500, 256, 1e-3, 0.2
PROBE_TRAIN, PROBE_TEST = range(100_000, 105_000), range(200_000, 202_000)  # held out from the SSL images


def views(x: torch.Tensor) -> torch.Tensor:
    """A random view of each image in [-1, 1]: resized crop (scale 0.6-1, reflected), flip, channel mixing, gain,
    offset, 20% grayscale."""
    n = len(x)
    scale = torch.empty(n).uniform_(0.6, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2) * 2 - 1) * (1 - scale)[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mix = torch.eye(3) * 0.4 + torch.rand(n, 3, 3) * 0.6
    x = torch.einsum("nij,njhw->nihw", mix / mix.sum(-1, keepdim=True), x)
    x = x * torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4) + torch.empty(n, 3, 1, 1).uniform_(-0.3, 0.3)
    gray = torch.rand(n) < 0.2
    x[gray] = x[gray].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return x.clamp(-1, 1)


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss of 2B embeddings, the two views of image i at i and i + B."""
    z = F.normalize(z, dim=1)
    sim = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
    b = len(z) // 2
    return F.cross_entropy(sim, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device))


def builtin_images(indices, resolution: int = RESOLUTION) -> torch.Tensor:
    from imagedata.procedural import render_batch, to_tensor

    return to_tensor(render_batch(np.asarray(indices), seed=SEED, resolution=resolution))


def train(steps: int | None = None, images: int | None = None, batch: int | None = None) -> dict:
    """The encoder's timm state dict after ``steps`` of SimCLR (default ``STEPS``, on ``IMAGES`` images, ``BATCH``
    a step; fixed seed; the global random state is kept)."""
    from tqdm.auto import tqdm

    from models.encoders import build_encoder

    steps, images, batch = steps or STEPS, images or IMAGES, batch or BATCH
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        encoder = build_encoder(NAME, RESOLUTION, seed=SEED)
        model = encoder.model.requires_grad_(True).train()
        dim = encoder.embed_dim
        head = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        data = builtin_images(range(images))
        params = [*model.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.05)
        for step in tqdm(range(steps), desc=f"training {NAME} (once)", file=sys.stderr, dynamic_ncols=True):
            for group in opt.param_groups:
                group["lr"] = LR * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
            x = data[torch.randint(0, len(data), (batch,))]
            loss = nt_xent(head(encoder(torch.cat([views(x), views(x)]))[0].mean(1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ensure(enc_type: str) -> None:
    """Train and cache ``simclr-builtin`` when ``enc_type`` names it and the cache has no weights file."""
    from common.checkpoint import save_atomic
    from models import hub
    from models.encoders import ENCODERS, parse_enc_type

    if NAME not in parse_enc_type(enc_type):
        return
    path = hub.cache_dir() / "encoders" / ENCODERS[NAME].files[0]
    if not path.is_file():
        print(f"training the {NAME} encoder on the built-in images (once, ~8 min on a CPU) ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(train(), path)


@torch.no_grad()
def pooled_tokens(encoder, x: torch.Tensor) -> torch.Tensor:
    """Mean-pooled patch tokens of images in [-1, 1] (what the probe reads)."""
    return torch.cat([encoder(x[i:i + 500])[0].mean(1) for i in range(0, len(x), 500)])


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Accuracy of logistic regression (LBFGS, L2 1e-3, standardised features) fitted on the first pair."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(a.shape[1], int(train_y.max()) + 1, requires_grad=True)
    bias = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, train_y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(((b @ w + bias).argmax(1) == test_y).float().mean())


def probe_report() -> dict[str, float]:
    """The probe on held-out built-in images (10 classes): this encoder, the same ViT at random, raw pixels."""
    from models.encoders import build_encoder, load_encoders

    tr, te = builtin_images(PROBE_TRAIN), builtin_images(PROBE_TEST)
    ytr, yte = torch.tensor(list(PROBE_TRAIN)) % 10, torch.tensor(list(PROBE_TEST)) % 10
    ours, random = load_encoders(NAME, "cpu", RESOLUTION)[0], build_encoder(NAME, RESOLUTION, seed=SEED)
    return {NAME: linear_probe(pooled_tokens(ours, tr), ytr, pooled_tokens(ours, te), yte),
            "random init": linear_probe(pooled_tokens(random, tr), ytr, pooled_tokens(random, te), yte),
            "raw pixels": linear_probe(tr.flatten(1), ytr, te.flatten(1), yte)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--json", type=str, default=None, help="also write the probe accuracies to this file")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    ensure(NAME)
    report = probe_report()
    for name, accuracy in report.items():
        print(f"linear probe, {name}: {accuracy:.3f}")
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main, parse_args())
