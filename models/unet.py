"""A small class-conditional U-Net for pixel-space DDPM (the CIFAR-10 system).

The DDPM / ADM layout (Ho et al., 2020, App. B; Dhariwal & Nichol, 2021, sec. 3): a
convolutional encoder-decoder with ``num_res_blocks`` residual blocks per resolution,
skip connections from every encoder stage to the decoder, self-attention at the
resolutions in ``attention_resolutions`` and in the middle. Conditioning: a sinusoidal
time embedding and a class embedding (``time_emb_dim`` and ``class_emb_dim``, 128 each),
concatenated and injected into every residual block as a per-channel scale and shift of
its second normalisation (ADM's ``use_scale_shift_norm``). Labels are dropped to the null
class ``num_classes`` with ``class_dropout_prob`` in training, as DiT's, so classifier-free
guidance works the same way. The output convolution and the last layer of every residual and
attention branch start at zero (ADM's ``zero_module``): the untrained network predicts zero noise.

``model(x, t, y)`` returns the eps prediction (``2 * in_channels`` channels with
``learn_sigma``), the same interface as ``DiT``, so ``train.py``, the DDPM objective and
the samplers serve both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.guidance import combine_cfg
from models.layers import LabelEmbedder, TimestepEmbedder


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels >= 4 else 1, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``x + conv(act(norm(h) * (1 + scale) + shift))`` with ``h = conv(act(norm(x)))`` (ADM)."""

    takes_embedding = True  # called as block(h, emb), also behind an activation-checkpointing wrapper

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = _norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, zero-initialised output."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """Class-conditional U-Net: ``model(x, t, y)`` -> (N, out_channels, H, W) eps prediction.

    ``channel_mult[i] * base_channels`` channels at resolution ``input_size / 2**i``; attention
    where the resolution is in ``attention_resolutions`` (the ADM convention) and in the middle.
    """

    prediction = "eps"  # what the samplers read it as (diffusion.denoiser)

    def __init__(
        self,
        input_size: int = 128,
        in_channels: int = 3,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        time_emb_dim: int = 128,
        class_emb_dim: int = 128,
        num_heads: int = 4,
        dropout: float = 0.1,
        class_dropout_prob: float = 0.1,
        num_classes: int = 10,
        learn_sigma: bool = False,
    ):
        super().__init__()
        if input_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"--image-size {input_size} does not halve {len(channel_mult) - 1} times "
                             f"(channel_mult {tuple(channel_mult)}); use a multiple of {2 ** (len(channel_mult) - 1)}")
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.t_embedder = TimestepEmbedder(time_emb_dim)
        self.y_embedder = LabelEmbedder(num_classes, class_emb_dim, class_dropout_prob)
        emb_dim = time_emb_dim + class_emb_dim

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, input_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if res in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.down.append(nn.ModuleList(layers))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, num_heads),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if res in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1)))
        # nn.Embedding keeps its N(0, 1) initialisation (ADM), so the class signal is as strong as the time signal

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, emb) if getattr(layer, "takes_embedding", False) else layer(h)
        return h

    def bottleneck_module(self) -> nn.Module:
        """DMD2's GAN head reads the middle block's output (``diffusion.network``)."""
        return self.mid[-1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) noisy images, t: (N,) diffusion steps, y: (N,) class labels."""
        emb = torch.cat([self.t_embedder(t), self.y_embedder(y)], dim=1)
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """``[cond; uncond]`` batch combined by classifier-free guidance on the eps channels (as DiT's)."""
        half = x[: len(x) // 2]
        return combine_cfg(self.forward(torch.cat([half, half], dim=0), t, y), cfg_scale, self.in_channels)


def unet_config(**defaults):
    """A registry constructor: ``UNet_models[name](**kw)`` with these defaults, any argument overridable."""

    def build(**kw) -> UNet:
        return UNet(**{**defaults, **kw})

    return build


# "UNet": the CIFAR-10 system (base 64, embeddings 128 each, attention at 16 x 16). "UNet-Ti" for tests.
UNet_models = {
    "UNet": unet_config(),
    "UNet-Ti": unet_config(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                           time_emb_dim=32, class_emb_dim=32, num_heads=2),
}
