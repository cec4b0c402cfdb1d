"""The network under its training wrappers.

DDP and ``torch.compile`` wrap a network in another module that forwards calls but not attributes, so
what a network declares (its latent normalisation, what it predicts, its null class) is read from the
network itself, never through a wrapper.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
