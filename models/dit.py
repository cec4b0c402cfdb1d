"""DiT: class-conditional diffusion transformer with adaLN-Zero blocks (Peebles & Xie, 2023).

Parameter names and shapes are those of the official release, so ``DiT-XL-2-256x256.pt``
and ``DiT-XL-2-512x512.pt`` load with ``strict=True``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from diffusion.guidance import DIT_GUIDED_CHANNELS, combine_cfg
from models.layers import (
    Attention,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_weights,
    modulate,
)


class DiTBlock(nn.Module):
    """Transformer block conditioned by adaLN-Zero (DiT sec. 3.2).

    The conditioning vector c regresses a shift, a scale and a residual gate for the
    attention and for the MLP branch; the gates start at zero so each block starts as
    the identity.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            hidden_size, int(hidden_size * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh")
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class DiT(nn.Module):
    """Diffusion transformer on (latent) images: ``model(x, t, y)`` -> (N, out_channels, H, W).

    ``t`` is the integer diffusion step (float steps work too), ``y`` the class index, with
    ``num_classes`` the null class. With ``learn_sigma`` the output holds the eps prediction
    followed by the variance interpolation values (``2 * in_channels`` channels).
    """

    prediction = "eps"  # what the samplers read it as (diffusion.denoiser)
    guided_channels = DIT_GUIDED_CHANNELS  # classifier-free guidance acts on these (official DiT)

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed 2-D sin-cos embedding; a frozen Parameter (not a buffer) so it is in the
        # state_dict under the official name and counted in the official parameter total.
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official initialisation; adaLN-Zero (DiT sec. 3.2) zeroes every modulation output and the final linear."""
        init_dit_weights(self)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) patch tokens -> (N, C, H, W) images."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        assert h * w == x.shape[1], "unpatchify expects a square grid of tokens"
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def bottleneck_module(self) -> nn.Module:
        """DMD2's GAN head reads the tokens after block depth / 2 (``diffusion.network``)."""
        return self.blocks[len(self.blocks) // 2 - 1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) inputs, t: (N,) diffusion steps, y: (N,) class labels."""
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D); labels dropped only in training mode
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)  # (N, T, p*p*out_channels)
        return self.unpatchify(x)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """Conditional and unconditional passes in one batch, combined by classifier-free guidance.

        The batch is ``[cond; uncond]`` (``y`` has the null class in the second half). As in the
        official release, the second half of ``x`` is replaced by the first, and only the first
        three output channels are guided (see ``diffusion.guidance``).
        """
        half = x[: len(x) // 2]
        model_out = self.forward(torch.cat([half, half], dim=0), t, y)
        return combine_cfg(model_out, cfg_scale, DIT_GUIDED_CHANNELS)


def dit_config(depth: int, hidden_size: int, patch_size: int, num_heads: int):
    """A registry constructor: ``DiT_models[name](**kw)`` builds that size with any other DiT argument."""
    return partial(DiT, depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads)


# The twelve official configurations (DiT Table 1 sizes x patch 2/4/8) and tiny ones for tests and the demo.
# Add a configuration by adding an entry: DiT_models["DiT-Name/p"] = dit_config(depth, hidden, p, heads).
DiT_models = {
    **{f"DiT-XL/{p}": dit_config(28, 1152, p, 16) for p in (2, 4, 8)},
    **{f"DiT-L/{p}": dit_config(24, 1024, p, 16) for p in (2, 4, 8)},
    **{f"DiT-B/{p}": dit_config(12, 768, p, 12) for p in (2, 4, 8)},
    **{f"DiT-S/{p}": dit_config(12, 384, p, 6) for p in (2, 4, 8)},
    **{f"DiT-Ti/{p}": dit_config(2, 64, p, 4) for p in (2, 4, 8)},
    # `make demo`: a few minutes of CPU training on the built-in dataset.
    **{f"DiT-Demo/{p}": dit_config(6, 128, p, 4) for p in (2, 4, 8)},
}
