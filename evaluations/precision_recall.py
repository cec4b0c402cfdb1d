"""Improved precision and recall (Kynkäänniemi et al., 2019) with the ADM evaluator's semantics.

Each set of features estimates a manifold: the union of balls around its points whose
radius is the distance to the point's k-th nearest neighbour in the same set (k = 3).
Precision is the fraction of samples inside the reference manifold, recall the fraction
of reference points inside the samples' manifold. As in ADM's ``ManifoldEstimator``:

- distances are *squared* Euclidean, ``max(|u|^2 - 2 u.v + |v|^2, 0)``, computed in
  float16 and recomputed in float32 for a block where any float16 value is not finite;
- the radius is the (k+1)-th smallest distance of a row *including the point itself*
  (so the k-th neighbour when no two points coincide; a duplicate counts as a neighbour);
- a point is inside when its distance to some centre is ``<=`` that centre's radius;
- rows and columns go through in blocks of 10,000 (the float16 fallback is per block).

Unlike ADM, a radius row keeps only the k+1 smallest distances of each column block,
not the whole row, which gives the same radii with memory independent of the set size.
"""

from __future__ import annotations

import numpy as np
import torch


def _squared_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm_u = (u * u).sum(1, keepdim=True)
    norm_v = (v * v).sum(1)[None]
    return torch.clamp(norm_u - 2 * (u @ v.T) + norm_v, min=0)


def pairwise_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(len(u), len(v))`` in float32: computed in float16, float32 if that overflows."""
    block = _squared_distances(u.half(), v.half())
    if torch.isfinite(block).all():
        return block.float()
    return _squared_distances(u.float(), v.float())


def _check(name: str, features: torch.Tensor, k: int) -> None:
    if features.ndim != 2 or len(features) <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} {name} feature vectors, "
                         f"got shape {tuple(features.shape)}")


def manifold_radii(features: torch.Tensor, k: int = 3, row_batch_size: int = 10_000,
                   col_batch_size: int = 10_000) -> torch.Tensor:
    """Squared radius of each point's ball: its (k+1)-th smallest distance to the set, itself included."""
    _check("", features, k)
    radii = torch.empty(len(features), dtype=torch.float32, device=features.device)
    for begin1 in range(0, len(features), row_batch_size):
        rows = features[begin1 : begin1 + row_batch_size]
        candidates = []
        for begin2 in range(0, len(features), col_batch_size):
            block = pairwise_distances(rows, features[begin2 : begin2 + col_batch_size])
            candidates.append(block.topk(min(k + 1, block.shape[1]), dim=1, largest=False).values)
        radii[begin1 : begin1 + len(rows)] = torch.cat(candidates, dim=1).kthvalue(k + 1, dim=1).values
    return radii


@torch.inference_mode()
def precision_recall(reference, samples, k: int = 3, row_batch_size: int = 10_000, col_batch_size: int = 10_000,
                     device=None) -> tuple[float, float]:
    """``(precision, recall)`` of ``samples`` against ``reference`` (``(N, D)`` features, e.g. pool_3)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reference = torch.as_tensor(np.asarray(reference, dtype=np.float32), device=device)
    samples = torch.as_tensor(np.asarray(samples, dtype=np.float32), device=device)
    _check("reference", reference, k)
    _check("sample", samples, k)
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"feature sizes differ: reference {reference.shape[1]}, samples {samples.shape[1]}")
    radii_ref = manifold_radii(reference, k, row_batch_size, col_batch_size)
    radii_samples = manifold_radii(samples, k, row_batch_size, col_batch_size)
    ref_inside = torch.zeros(len(reference), dtype=torch.bool, device=device)
    samples_inside = torch.zeros(len(samples), dtype=torch.bool, device=device)
    for begin1 in range(0, len(reference), row_batch_size):
        end1 = begin1 + row_batch_size
        for begin2 in range(0, len(samples), col_batch_size):
            end2 = begin2 + col_batch_size
            block = pairwise_distances(reference[begin1:end1], samples[begin2:end2])
            ref_inside[begin1:end1] |= (block <= radii_samples[None, begin2:end2]).any(dim=1)
            samples_inside[begin2:end2] |= (block <= radii_ref[begin1:end1, None]).any(dim=0)
    return samples_inside.double().mean().item(), ref_inside.double().mean().item()
