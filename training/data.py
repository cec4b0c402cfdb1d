"""Data order for training: a distributed sampler that can start mid-epoch (exact resume)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start at sample ``start`` of this rank's share.

    The order of an epoch depends only on (seed, epoch), so skipping the first
    ``start`` indices continues an interrupted epoch exactly.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_loader(dataset, batch_size: int, num_replicas: int, rank: int, seed: int, num_workers: int):
    """A loader whose randomness never touches the global RNG (its own generator), so the
    training RNG stream is the same whether a run was resumed or not."""
    sampler = ResumableSampler(dataset, num_replicas, rank, seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), drop_last=True,
                        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def batch_sizes(batch_size: int, world: int, accum: int, flag: str) -> tuple[int, int]:
    """``(per-process micro-batch, samples per update)`` as REPA, REG and REPA-E count them: ``batch_size``
    is split over the processes and each of the ``accum`` micro-batches is that large, so gradient
    accumulation multiplies the batch of an update (``batch_size x accum``)."""
    if batch_size % world:
        raise ValueError(f"{flag} {batch_size} is not divisible by {world} processes; pass a multiple of {world}")
    return batch_size // world, batch_size * accum


def random_flip(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of each image with probability 1/2, drawn from the global RNG."""
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x), flip


def overfit_subset(dataset, samples_per_class: int, num_classes: int) -> Subset:
    """The first ``samples_per_class`` items of every class, in index order (overfit mode).

    A run that can reproduce its few training images shows that model, objective and sampler
    fit together; ``labels`` keeps their classes for the overfit report."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError("--overfit needs labelled images (--dataset builtin, cifar10 or an image folder), "
                         "not a latent cache")
    chosen, seen = [], [0] * num_classes
    for index, label in enumerate(targets):
        if seen[label] < samples_per_class:
            chosen.append(index)
            seen[label] += 1
        if len(chosen) == samples_per_class * num_classes:
            break
    subset = Subset(dataset, chosen)
    subset.labels = [targets[i] for i in chosen]
    return subset
