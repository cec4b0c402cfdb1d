"""A cheap stand-in for the ported Inception in evaluator tests (the real one needs seconds per image on a CPU).

It has the interface the evaluator uses (``forward`` → ``(pool, spatial)``, ``feature_dims``,
``class_probabilities``) with small feature sizes, so Fréchet distances stay fast.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class StandInInception(nn.Module):
    """Fixed random projections of each image's 4 x 4 average colours: 16-d "pool", 12-d "spatial", 1008 classes."""

    feature_dims = (16, 12)

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = nn.Parameter(torch.randn(48, 16, generator=g), requires_grad=False)
        self.spatial = nn.Parameter(torch.randn(48, 12, generator=g), requires_grad=False)
        self.fc = nn.Linear(16, 1008)
        self.fc.weight.data = torch.randn(1008, 16, generator=g)

    def forward(self, images: torch.Tensor):
        x = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return torch.relu(x @ self.pool), x @ self.spatial

    def class_probabilities(self, pool: torch.Tensor) -> torch.Tensor:
        return torch.softmax(pool.float() @ self.fc.weight.T, dim=1)


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
