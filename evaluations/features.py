"""Inception features of an image source, batched on one device or sharded over processes.

``compute_activations`` is ADM's ``Evaluator.compute_activations``: every image's pool_3
and spatial features, in order. ``compute_features`` is what the evaluator runs: the FID
and sFID statistics accumulate as sums in float64 (so the spatial features, and the
pool features of images not needed for precision/recall, are never stored), and under
``torch.distributed`` each process takes a contiguous shard of the images; the sums
are all-reduced and the kept pool rows gathered in image order, so every process ends
with the same result as one process alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from evaluations.frechet import feature_statistics
from evaluations.inception import exact_float32


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_nchw(batch, device) -> torch.Tensor:
    """uint8 NHWC (numpy or tensor) → NCHW on ``device`` (still uint8; the network converts)."""
    return torch.as_tensor(batch).to(device, non_blocking=True).permute(0, 3, 1, 2)


@torch.inference_mode()
def compute_activations(batches: Iterable, model: torch.nn.Module, progress: bool = True):
    """``(pool_3 (N, 2048), spatial (N, 2023))`` float32 arrays of uint8 NHWC ``batches`` (ADM's semantics)."""
    device, pools, spatials = _device_of(model), [], []
    with exact_float32():
        for batch in tqdm(batches, desc="inception features", disable=not progress, dynamic_ncols=True):
            pool, spatial = model(_to_nchw(batch, device))
            pools.append(pool.float().cpu())
            spatials.append(spatial.float().cpu())
    return torch.cat(pools).numpy(), torch.cat(spatials).numpy()


def compute_statistics(activations) -> tuple[np.ndarray, np.ndarray]:
    """ADM's ``compute_statistics``: ``np.mean`` and ``np.cov(rowvar=False)`` of ``(N, D)`` activations."""
    return feature_statistics(activations)


class RunningMoments:
    """``n``, ``sum x`` and ``sum x x^T`` in float64; ``statistics()`` gives the mean and np.cov's unbiased covariance."""

    def __init__(self, dim: int, device):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += len(x)
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def all_reduce(self, device) -> None:
        count = torch.tensor([self.n], dtype=torch.float64, device=device)
        for tensor in (count, self.sum, self.outer):
            moved = tensor.to(device)
            dist.all_reduce(moved)
            tensor.copy_(moved)
        self.n = int(count.item())

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        sigma = 0.5 * (sigma + sigma.T)  # exactly symmetric, as np.cov's
        return mu.cpu().numpy(), sigma.cpu().numpy()


@dataclass
class Features:
    """What the metrics need of one image set."""

    count: int
    mu: np.ndarray  # pool_3 mean (2048,) float64
    sigma: np.ndarray  # pool_3 covariance (2048, 2048)
    mu_s: np.ndarray  # spatial mean (2023,)
    sigma_s: np.ndarray
    pool: np.ndarray  # kept pool_3 rows (M, 2048) float32, in image order (precision/recall, IS)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(device) -> torch.device:
    """NCCL moves CUDA tensors, gloo CPU ones."""
    return torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather_rows(rows: torch.Tensor, device) -> torch.Tensor:
    """Concatenate every process's ``(n_r, D)`` rows in rank order (``n_r`` may differ)."""
    comm = _comm_device(device)
    world = dist.get_world_size()
    count = torch.tensor([len(rows)], device=comm)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros(longest, rows.shape[1], dtype=rows.dtype, device=comm)
    padded[: len(rows)] = rows.to(comm)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)]).cpu()


@torch.inference_mode()
def compute_features(source, model: torch.nn.Module, batch_size: int = 100, pool_rows=None,
                     progress: bool = True) -> Features:
    """Statistics of all images of ``source`` and the pool_3 rows ``pool_rows`` (sorted indices; None: all).

    ``source`` is one of ``evaluations.images``' sources; ``model`` maps uint8 NCHW images to
    ``(pool, spatial)`` features of sizes ``model.feature_dims``. Under torch.distributed each
    process reads images ``[rank * N // world, (rank + 1) * N // world)``.
    """
    rank, world = _world()
    n = len(source)
    start, stop = rank * n // world, (rank + 1) * n // world
    device = _device_of(model)
    pool_dim, spatial_dim = model.feature_dims
    pool_moments, spatial_moments = RunningMoments(pool_dim, device), RunningMoments(spatial_dim, device)
    keep = np.arange(n) if pool_rows is None else np.asarray(pool_rows)
    kept = []
    batches = source.batches(batch_size, start, stop)
    total = math.ceil((stop - start) / batch_size)
    with exact_float32():
        bar = tqdm(batches, total=total, desc="inception features", disable=not progress or rank != 0,
                   dynamic_ncols=True)
        for begin, batch in zip(range(start, stop, batch_size), bar):
            pool, spatial = model(_to_nchw(batch, device))
            pool_moments.update(pool)
            spatial_moments.update(spatial)
            index = keep[(keep >= begin) & (keep < begin + len(batch))] - begin
            kept.append(pool[torch.as_tensor(index, device=pool.device)].float().cpu())
    pool = torch.cat(kept) if kept else torch.zeros(0, pool_dim)
    if world > 1:
        comm = _comm_device(device)
        pool_moments.all_reduce(comm)
        spatial_moments.all_reduce(comm)
        pool = _gather_rows(pool, device)
    mu, sigma = pool_moments.statistics()
    mu_s, sigma_s = spatial_moments.statistics()
    return Features(n, mu, sigma, mu_s, sigma_s, pool.numpy())
