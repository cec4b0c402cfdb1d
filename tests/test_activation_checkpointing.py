"""Activation checkpointing (models/activation_checkpointing.py): every family's blocks recompute in the backward
pass, with the same outputs, gradients and state-dict names as the plain network."""

from __future__ import annotations

import copy

import pytest
import torch

from models import create_model
from models.activation_checkpointing import enable_activation_checkpointing
from models.edm_unet import EDMPrecond
from models.stable_diffusion import DiffusersEps


def tiny_diffusers() -> DiffusersEps:
    from diffusers import UNet2DConditionModel

    return DiffusersEps(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4))


CASES = {
    "DiT": (lambda: create_model("DiT-Ti/4", input_size=16, in_channels=3, num_classes=10, learn_sigma=True),
            lambda x: (torch.full((2,), 500), torch.tensor([1, 2])), 3),
    "SiT": (lambda: create_model("SiT-Ti/4", input_size=16, in_channels=3, num_classes=10),
            lambda x: (torch.full((2,), 0.5), torch.tensor([1, 2])), 3),
    "U-Net": (lambda: create_model("UNet-Ti", input_size=16, in_channels=3, num_classes=10),
              lambda x: (torch.full((2,), 500), torch.tensor([1, 2])), 3),
    "EDM": (lambda: EDMPrecond(16, 3, label_dim=10, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                               attn_resolutions=[8]),
            lambda x: (torch.full((2,), 1.5), torch.tensor([1, 2])), 3),
    "diffusers": (tiny_diffusers, lambda x: (torch.full((2,), 500), torch.randn(2, 5, 32)), 4),
}


@pytest.mark.parametrize("family", list(CASES))
def test_checkpointed_blocks_recompute_with_equal_outputs_gradients_and_names(family):
    build, conditions, channels = CASES[family]
    torch.manual_seed(0)
    plain = build().train()
    for p in plain.parameters():  # DiT's and SiT's adaLN-Zero layers start at zero: give every weight a gradient path
        p.data.add_(0.01 * torch.randn_like(p))
    checkpointed = copy.deepcopy(plain)
    assert enable_activation_checkpointing(checkpointed) > 0
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, channels, 16 if family != "diffusers" else 8, 16 if family != "diffusers" else 8)
    t, y = conditions(x)
    outputs, stored = [], []
    for net in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks in the forward and the recomputation
        saved, weights = [], {p.data_ptr() for p in net.parameters()}

        def pack(tensor, saved=saved, weights=weights):  # activations, not weights
            saved.append(0 if tensor.data_ptr() in weights else tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = net(x, t, y)
        stored.append(sum(saved))
        out = out[0] if isinstance(out, tuple) else out  # SiT: (velocity, projected tokens)
        out.square().mean().backward()
        outputs.append((out.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = outputs
    assert stored[1] < 0.8 * stored[0], stored  # the blocks' activations are not kept for the backward pass
    torch.testing.assert_close(a, b)
    assert len(grads_a) == len(grads_b) and grads_a
    for (name_a, ga), gb in zip(grads_a.items(), grads_b.values()):
        torch.testing.assert_close(ga, gb, msg=name_a)
    checkpointed.load_state_dict(plain.state_dict())  # the plain network's weights load unchanged
