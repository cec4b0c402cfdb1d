"""Transformer pieces shared by the DiT and SiT families (DiT, SiT, REPA, REG).

Parameter names follow the official DiT release (Peebles & Xie, 2023), which uses
timm's ``PatchEmbed`` / ``Attention`` / ``Mlp`` names (``proj``, ``qkv``, ``fc1``, ``fc2``),
so official checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` of tokens (N, T, D) by (N, D) vectors (DiT sec. 3.2)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of a (possibly fractional) timestep followed by an MLP (DiT sec. 3.2)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """(N,) timesteps -> (N, dim) float32 features ``[cos(t w_i), sin(t w_i)]``, ``w_i = max_period^(-i/half)``.

        Odd ``dim`` is padded with one zero column.
        """
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = torch.exp(-math.log(max_period) * exponent)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        # The features are float32; match the MLP so a model cast to bf16/fp16 runs without autocast.
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table with a learned null class for classifier-free guidance.

    When ``dropout_prob > 0`` the table has ``num_classes + 1`` rows; row ``num_classes`` is the
    null (unconditional) class. Labels are replaced by it with probability ``dropout_prob`` in
    training mode, or wherever ``force_drop_ids == 1``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_null_class = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_null_class, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped labels by the null class ``num_classes``."""
        if force_drop_ids is None:
            # Same draw (shape, device, order) as the official release, so seeded runs match it.
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm names), run by SDPA.

    ``qk_norm`` LayerNorms each head's queries and keys before the dot product (timm's option,
    used by REPA/REG as ``qk_norm``; keys ``q_norm`` / ``k_norm``, eps 1e-5 as timm's default
    ``nn.LayerNorm``). Off, the module has DiT's parameters only.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # Registered between qkv and proj, as in timm, so state_dict and parameter order match.
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, head_dim)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Two-layer transformer MLP ``fc2(act(fc1(x)))`` (timm names)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        out_features: int | None = None,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Split an (N, C, H, W) input into p x p patches and embed each linearly: (N, T, D), row-major tokens."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"input size {img_size} is not divisible by patch size {patch_size}")
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)  # a pair, as timm stores it
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map of each token to its patch (DiT sec. 3.2).

    With ``cls_token_dim`` (REG) token 0 is the class token: it goes through its own
    ``linear_cls`` back to the encoder's feature size and ``forward`` returns
    ``(patch_outputs, cls_output)``; the other tokens go through ``linear`` as usual.
    """

    def __init__(
        self, hidden_size: int, patch_size: int, out_channels: int, cls_token_dim: int | None = None
    ):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        # Registered between linear and adaLN_modulation, as in REG, so parameter order matches.
        self.linear_cls = None if cls_token_dim is None else nn.Linear(hidden_size, cls_token_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        if self.linear_cls is None:
            return self.linear(x)
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-2i/embed_dim)``."""
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (grid_size**2, embed_dim), float64, row-major tokens.

    Same layout as MAE / the DiT release: the first half of the channels encodes the token's
    column (w) coordinate, the second half its row (h) coordinate, each half as [sin, cos].
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2-D sin-cos embedding, got {embed_dim}")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    return np.concatenate([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], axis=1)


def init_dit_weights(model: nn.Module) -> None:
    """DiT's initialisation of a DiT-family model (DiT sec. 3.2), used unchanged by SiT, REPA and REG.

    Expects DiT's names: ``x_embedder``, ``t_embedder``, ``y_embedder``, ``pos_embed``, ``blocks``,
    ``final_layer``. Every linear (REPA's projectors and REG's ``cls_projectors2`` included) is
    xavier-uniform with zero bias; the patch conv is initialised as the linear map it is; the label
    table and timestep MLP are N(0, 0.02). ``pos_embed`` gets the fixed sin-cos table; rows in front
    of the patch tokens (REG's class token) are zero, as MAE's ``extra_tokens``. adaLN-Zero: every
    modulation output and every final linear start at zero, so each block starts as the identity and
    the model's output as zero.
    """

    def xavier_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    model.apply(xavier_linear)

    grid = torch.from_numpy(get_2d_sincos_pos_embed(model.pos_embed.shape[-1], model.x_embedder.grid_size))
    extra_tokens = model.pos_embed.shape[1] - grid.shape[0]
    model.pos_embed.data.copy_(F.pad(grid, (0, 0, extra_tokens, 0)).float().unsqueeze(0))

    w = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)

    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)

    final = model.final_layer
    zero = [*(b.adaLN_modulation[-1] for b in model.blocks), final.adaLN_modulation[-1], final.linear]
    for layer in [*zero, *([final.linear_cls] if final.linear_cls is not None else [])]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
