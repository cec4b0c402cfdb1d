"""Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): a network's
blocks keep only their inputs in the forward pass and recompute their activations in the backward pass.

The blocks are the units FSDP and DMD2 use too: DiT's and SiT's transformer blocks, the U-Net's residual and
attention blocks, EDM's ``UNetBlock`` s; a diffusers UNet (inside DMD2's ``DiffusersEps``) uses its own
``enable_gradient_checkpointing``. PyTorch's ``checkpoint_wrapper`` keeps the state dict's names unchanged.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)


def block_types() -> tuple[type, ...]:
    """The block classes that are checkpointed."""
    from models.dit import DiTBlock  # SiT's blocks too
    from models.edm_unet import UNetBlock
    from models.unet import AttentionBlock, ResBlock

    return DiTBlock, ResBlock, AttentionBlock, UNetBlock


def enable_activation_checkpointing(net: nn.Module) -> int:
    """Checkpoint every block of ``net`` in place; returns how many blocks (0: ``net`` has none)."""
    unet = getattr(net, "unet", None)
    if unet is not None and hasattr(unet, "enable_gradient_checkpointing"):  # diffusers
        unet.enable_gradient_checkpointing()
        return sum(bool(getattr(m, "gradient_checkpointing", False)) for m in unet.modules())
    kinds = block_types()
    wrapper = partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(net, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, kinds))
    return sum(isinstance(m, CheckpointWrapper) for m in net.modules())
