"""GAN discriminators: REPA-E's PatchGAN and DMD2's classifier head.

PatchGAN (Isola et al. 2017, pix2pix), as taming-transformers and REPA-E build it.

``NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)``: a 4x4 stride-2 convolution and LeakyReLU(0.2),
``n_layers - 1`` more stride-2 convolutions (channels doubling, at most 8 ndf) each with BatchNorm and
LeakyReLU, one stride-1 convolution block, then a 4x4 convolution to a one-channel logit map. The
layers sit in ``main`` (an ``nn.Sequential``) so the parameter names are the originals'
(``main.0.weight``, ``main.3.running_mean``, ...); convolutions before a BatchNorm have no bias.
``weights_init`` is taming's: convolution weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
"""

from __future__ import annotations

import torch
from torch import nn


def weights_init(module: nn.Module) -> None:
    """taming's initialisation, applied with ``model.apply(weights_init)``."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0)


class NLayerDiscriminator(nn.Module):
    """``model(images)`` -> (N, 1, h, w) real / fake logits, one per patch; ``model(real, fake)`` runs both
    batches, one after the other (BatchNorm sees each alone), in one call, as one DDP forward."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.min_size = 3 * 2**n_layers  # n_layers halvings, then two 4x4 convolutions that each take one off
        self.apply(weights_init)

    def forward(self, x: torch.Tensor, fake: torch.Tensor | None = None):
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"the PatchGAN discriminator needs images of at least {self.min_size} px, not "
                             f"{tuple(x.shape[-2:])}: use a resolution of {self.min_size} or more")
        if fake is None:
            return self.main(x)
        return self.main(x), self.main(fake)


def dmd2_classifier_head(channels: int, resolution: int) -> nn.Sequential:
    """DMD2's ``cls_pred_branch`` (sec. 4.3): a realism logit from the fake score's (N, channels, r, r)
    bottleneck. ``log2(r / 4)`` blocks of [4x4 stride-2 convolution, GroupNorm(32), SiLU] bring r to 4
    (one for EDM's 8x8, three for SDXL's 32x32), then a 4x4 stride-4 convolution block to 1x1 and a 1x1
    convolution to one logit, in one ``nn.Sequential`` so the names are DMD2's (``0.weight``, ...).
    GroupNorm has 32 groups, fewer when ``channels`` would leave one channel a group.
    Grids of another size are first average-pooled to the nearest such size."""
    if resolution < 1:
        raise ValueError(f"the bottleneck must be at least 1x1, not {resolution}x{resolution}")
    downs = max(0, (resolution // 4).bit_length() - 1)
    # GroupNorm(32) as DMD2, with at least two channels a group (the 1x1 map has one value a channel)
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and (channels // g >= 2 or g == 1))

    def block(stride: int, kernel: int = 4, padding: int = 0) -> list[nn.Module]:
        return [nn.Conv2d(channels, channels, kernel, stride, padding), nn.GroupNorm(groups, channels), nn.SiLU()]

    layers: list[nn.Module] = []
    if resolution != 4 * 2**downs:
        layers.append(nn.AdaptiveAvgPool2d(4 * 2**downs))
    for _ in range(downs):
        layers += block(2, padding=1)
    layers += block(4) + [nn.Conv2d(channels, 1, 1)]
    return nn.Sequential(*layers)
