"""EDM's ADM network (``DhariwalUNet``) and its preconditioning wrapper (``EDMPrecond``).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models": the
preconditioning of Table 1 around Dhariwal & Nichol's ADM U-Net ("config F" for ImageNet-64).
Parameter and buffer names follow EDM's training/networks.py, so ``pkl['ema'].state_dict()`` of
``edm-imagenet-64x64-cond-adm.pkl`` loads strictly (models/edm_pickle.py reads such a pickle).
Two DMD2 changes (Yin et al. 2024) are included: ``use_fp16`` runs the network in bfloat16 and
``return_bottleneck=True`` returns the encoder output that DMD2's GAN classifier reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.edm import precond_coefficients


def _uniform(shape: list[int], fan_in: int, gain: float) -> nn.Parameter:
    """U(-gain / sqrt(fan_in), gain / sqrt(fan_in)): EDM's ``kaiming_uniform`` with init_weight sqrt(1/3)
    at gain 1 (PyTorch's default layer initialisation); gain 0 gives EDM's zero initialisation."""
    bound = gain / math.sqrt(fan_in) if fan_in else 0.0
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class Linear(nn.Module):
    """A fully connected layer whose weights follow the input's dtype (EDM's mixed precision)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _uniform([out_features, in_features], in_features, gain)
        self.bias = _uniform([out_features], in_features, gain) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """A 'same' convolution (``kernel`` 0: none) after an optional resampling by ``resample_filter``:
    with ADM's filter [1, 1], 2x2 average pooling (down) or nearest-neighbour 2x upsampling (up)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, gain: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        fan_in = in_channels * kernel * kernel
        self.weight = _uniform([out_channels, in_channels, kernel, kernel], fan_in, gain) if kernel else None
        self.bias = _uniform([out_channels], fan_in, gain) if kernel and bias else None
        if up or down:  # EDM stores the outer product of [1, 1] divided by its sum squared
            self.register_buffer("resample_filter", torch.full([1, 1, 2, 2], 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=pad)
            else:
                x = F.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C / 4) groups (EDM's rule for narrow layers)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """ADM's residual block: GN-SiLU-conv, adaptive scale/shift from the embedding, GN-SiLU-dropout-conv,
    a skip path (1x1 projection if the width changes; resampling if up/down), then optional
    self-attention with one head per 64 channels."""

    takes_embedding = True  # called as block(x, emb), also behind an activation-checkpointing wrapper

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, channels_per_head: int = 64, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = in_channels, out_channels, dropout
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down)
        self.affine = Linear(emb_channels, out_channels * 2)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, gain=0)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1 if out_channels != in_channels else 0, up=up, down=down)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1, gain=0)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].to(x.dtype).chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        if self.num_heads:
            # EDM's qkv layout: channels grouped by head, then (q, k, v) interleaved per channel.
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n, self.num_heads, c // self.num_heads, 3, h * w).unbind(3)
            a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            x = self.proj(a.transpose(-1, -2).reshape(n, c, h, w)) + x
        return x


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of the noise level, [cos | sin] halves (no parameters)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=torch.float32, device=x.device) / half)
        x = x.outer(freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) as EDM re-implements it; defaults are the ImageNet-64 model."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, dropout=dropout)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, gain=0) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = None
        if label_dim:  # EDM: kaiming_normal times sqrt(label_dim), i.e. N(0, 1) for one-hot inputs
            self.map_label = Linear(label_dim, emb_channels, bias=False)
            nn.init.normal_(self.map_label.weight)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):  # each "block" takes one encoder skip
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skips.pop(), model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, gain=0)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None, return_bottleneck: bool = False) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if self.training and self.label_dropout:  # drop labels for classifier-free guidance
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                class_labels = class_labels * keep.to(class_labels.dtype)
            emb = emb + self.map_label(class_labels)
        emb = F.silu(emb)

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if getattr(layer, "takes_embedding", False) else layer(x)
            skips.append(x)
        if return_bottleneck:  # DMD2: the encoder output feeds the GAN classifier
            return x
        for name, layer in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), Table 1 of the EDM paper (prediction "x0")."""

    prediction = "x0"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        if model_type != "DhariwalUNet":
            raise ValueError(f"model_type {model_type!r} is not supported: only EDM's 'DhariwalUNet' (ADM) is implemented")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, sigma_min, sigma_max, sigma_data
        self.model = DhariwalUNet(img_resolution, img_channels, img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                return_bottleneck: bool = False, force_fp32: bool = False,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised x0 in float32 (or, with ``return_bottleneck``, the encoder output in float32).
        ``class_labels``: integer labels [N] or one-hot / soft rows [N, label_dim]; None gives zeros.
        ``use_fp16`` runs the network in bfloat16 on CUDA (DMD2; EDM used float16)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        elif not class_labels.is_floating_point():
            class_labels = F.one_hot(class_labels.reshape(-1), self.label_dim).to(torch.float32)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.bfloat16 if fp16 else torch.float32

        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels, augment_labels=augment_labels,
                         return_bottleneck=return_bottleneck).to(torch.float32)
        return F_x if return_bottleneck else c_skip * x + c_out * F_x
