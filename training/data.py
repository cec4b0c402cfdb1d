"""Data for training: a distributed sampler that can start mid-epoch (exact resume), the batches the
model sees, the overfit subset."""

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


class Batches:
    """Turns a loader batch into ``(raw, x, y)`` on ``device`` as its dataset's stored form says
    (``imagedata/inputs.py``): clean images in [0, 255] for the encoders (None for latents), the model
    input and the conditions, mapped by ``conditions`` when given (a text teacher's prompt encoder).
    ``flip=False`` uses images and cached latents as stored (DMD2 flips nothing)."""

    def __init__(self, dataset, codec, device, flip: bool = True, conditions=None):
        self.dataset, self.codec, self.device, self.flip, self.conditions = dataset, codec, device, flip, conditions

    @torch.no_grad()
    def __call__(self, batch):
        batch = [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]
        raw, x, y = self.dataset.model_input(batch, self.codec, self.flip)
        return raw, x, self.conditions(y) if self.conditions else y


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
    subset = StoredSubset(dataset, chosen)
    subset.labels = [targets[i] for i in chosen]
    return subset


class StoredSubset(Subset):
    """A ``Subset`` that keeps its dataset's stored form (``model_input``, ``latent_shape``)."""

    def model_input(self, batch, codec, flip: bool = True):
        return self.dataset.model_input(batch, codec, flip)

    @property
    def latent_shape(self):
        return self.dataset.latent_shape
