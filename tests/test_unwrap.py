"""What a network declares is read from the network, not through its DDP or compile wrapper."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diffusion.network import unwrap
from loss.denoising import InterpolantObjective
from models import create_model


def test_repae_latent_norm_runs_under_a_ddp_wrapper(tmp_path):
    """REPA-E's SiT step gets the DDP-wrapped SiT: its latent BatchNorm still normalises the latents and
    counts the batch."""
    torch.manual_seed(0)
    sit = create_model("SiT-Ti/4", input_size=8, in_channels=4, num_classes=5, z_dims=[16], encoder_depth=1,
                       bn_momentum=0.1).train()
    x, y, zs = 3 + 2 * torch.randn(4, 4, 8, 8), torch.arange(4), [torch.randn(4, 4, 16)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(sit)
        assert unwrap(wrapped) is sit and unwrap(torch.compile(wrapped)) is sit
        InterpolantObjective(proj_coeff=0.5)(wrapped, x, y, zs)
    finally:
        dist.destroy_process_group()
    assert int(sit.bn.num_batches_tracked) == 1
    torch.testing.assert_close(sit.bn.running_mean, 0.9 * 0 + 0.1 * x.mean(dim=(0, 2, 3)))
