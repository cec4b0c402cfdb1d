"""PatchGAN discriminator (Isola et al. 2017, pix2pix), as taming-transformers and REPA-E build it.

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
        self.apply(weights_init)

    def forward(self, x: torch.Tensor, fake: torch.Tensor | None = None):
        if fake is None:
            return self.main(x)
        return self.main(x), self.main(fake)
