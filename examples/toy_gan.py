"""A toy class-conditional GAN as a method on the engine: the worked example of "Adding a method" (README).

Two networks, each with its own AdamW optimizer, and an EMA of the generator, which draws the sample grids.
One training step is two updates, in this order:

1. the discriminator, on real images and detached generated ones: softplus(-D(x)) + softplus(D(G(z)));
2. the generator, through the frozen discriminator: the non-saturating loss softplus(-D(G(z))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.engine import Method, Trainable, adamw


class Generator(nn.Module):
    """Image-shaped noise and a class to an image in [-1, 1]."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(num_classes, width)
        self.net = nn.Sequential(nn.Conv2d(channels + width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = self.embed(y)[:, :, None, None].expand(-1, -1, *z.shape[2:])
        return self.net(torch.cat([z, label], dim=1))


class Discriminator(nn.Module):
    """An image and a class to a realism logit (projection discriminator)."""

    def __init__(self, channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())
        self.head, self.embed = nn.Linear(width, 1), nn.Embedding(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return self.head(h).squeeze(1) + (self.embed(y) * h).sum(1)


class ToyGAN(Method):
    """The generator and discriminator under checkpoint keys ``generator`` and ``discriminator``, their optimizers
    ``opt_g`` and ``opt_d``, and the generator's EMA ``ema``, which the grids sample."""

    def __init__(self, image_size: int, num_classes: int, device, lr: float = 2e-4, ema_decay: float = 0.999):
        generator, discriminator = Generator(3, num_classes).to(device), Discriminator(3, num_classes).to(device)
        self.modules = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {"opt_g": adamw(generator.parameters(), lr, betas=(0.5, 0.999)),
                           "opt_d": adamw(discriminator.parameters(), lr, betas=(0.5, 0.999))}
        self.emas = {"ema": ("generator", ema_decay)}
        self.model_kwargs = {"in_channels": 3, "input_size": image_size}
        self.num_classes, self.device = num_classes, device
        self.frozen_d = Trainable(discriminator)

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        x, y = (t.to(self.device) for t in batch)
        z = torch.randn_like(x)
        with engine.autocast():
            fake = self.modules["generator"](z, y)
            d_loss = (F.softplus(-self.modules["discriminator"](x, y)) +
                      F.softplus(self.modules["discriminator"](fake.detach(), y))).mean()
        engine.backward(d_loss)
        engine.step("opt_d")

        self.frozen_d.set(engine.module("discriminator"), False)
        with engine.autocast():
            g_loss = F.softplus(-self.modules["discriminator"](fake, y)).mean()
        engine.backward(g_loss)
        engine.step("opt_g")
        self.frozen_d.set(engine.module("discriminator"), True)
        return {"loss": g_loss, "d_loss": d_loss}

    def grid_images(self, network, noise, conditions) -> torch.Tensor:
        return network(noise, conditions)
