"""SiT with REPA's projectors and REG's class token, on DiT's layers.

- SiT (Ma et al., 2024): DiT's backbone trained as a flow; ``learn_sigma=True`` keeps the official
  ``SiT-XL-2-256x256.pt`` layout (= DiT's keys) and returns only the first ``in_channels``.
- REPA (Yu et al., 2025, sec. 3): an MLP projector ``h_phi`` per target encoder maps the hidden
  tokens after block ``encoder_depth`` to the encoder's feature size; the training loss aligns them
  with the encoder's patch features (``proj_coeff``). Released ``last.pt`` layout.
- REG (Wu et al., 2025): the encoder's class token, noised like the latent, enters as token 0
  (``cls_projectors2`` then ``wg_norm``) and is denoised by ``final_layer.linear_cls``.

Time: REPA and REG train with t=0 data, t=1 noise and predict ``v = noise - data`` (linear path);
the original SiT code (its ``transport/``) runs the other way, t=1 data, and predicts
``u = data - noise``. ``time_convention="sit"`` reads a network trained the SiT way (the released
``SiT-XL-2-256x256.pt``, checkpoints of SiT's ``train.py``) in REPA's time, which every sampler and
loss here uses: ``forward(x, t) = -u(x, 1 - t)``, the same velocity field, so the weights stay SiT's
and training this model trains them in SiT's own convention.

Parameter names, shapes and order are those of REPA @ 67f7145 and REG @ 021ea2e ``models/sit.py``,
so their checkpoints (and optimizer states, which follow parameter order) load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from diffusion.guidance import DIT_GUIDED_CHANNELS
from models.dit import DiT, DiTBlock
from models.layers import FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, init_dit_weights

TIME_CONVENTIONS = ("repa", "sit")


def build_mlp(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """REPA's projector ``h_phi``: three linears with SiLU between (keys ``projectors.k.{0,2,4}``)."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


def check_sit_args(z_dims: tuple[int, ...], encoder_depth: int, depth: int, cls_token_dim: int | None,
                   time_convention: str, transport: dict | None = None) -> None:
    """One-line errors for a SiT that cannot be built as asked."""
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(f"unknown time_convention {time_convention!r}; use one of {', '.join(TIME_CONVENTIONS)}")
    if transport and time_convention != "sit":
        raise ValueError("a SiT trained with SiT's transport runs in SiT's time: time_convention='sit'")
    if any(z <= 0 for z in z_dims):
        raise ValueError(
            f"z_dims must be positive encoder feature sizes (e.g. 768 for DINOv2-B), got {z_dims}"
        )
    if z_dims and not 1 <= encoder_depth <= depth:
        raise ValueError(
            f"encoder_depth {encoder_depth} must be between 1 and depth {depth}: the projectors "
            "read the tokens after that block (REPA: 4 for SiT-B, 8 for SiT-L/XL)"
        )
    if cls_token_dim is not None and (not z_dims or cls_token_dim != z_dims[0]):
        raise ValueError(
            f"cls_token_dim {cls_token_dim} must equal z_dims[0] (REG's class token is the first "
            f"encoder's [CLS] feature), got z_dims={z_dims}; pass z_dims=[{cls_token_dim}]"
        )


class SiT(nn.Module):
    """SiT / REPA / REG transformer: ``model(x, t, y[, cls_token])`` -> ``(output, zs[, cls_output])``.

    - ``z_dims=()``: plain SiT, ``zs == []``. ``z_dims=(768,)``: REPA, one projector per entry.
    - ``cls_token_dim``: REG. As in REG, the class token is the first target encoder's [CLS]
      feature, so it must equal ``z_dims[0]`` (REG reads its size from ``z_dims[0]``), and the
      projector outputs cover all T+1 tokens (the class token first).
    - ``t`` is the flow time in [0, 1] (REPA/REG: t=0 data, t=1 noise), fed to the embedder as is
      (as ``1 - t`` with ``time_convention="sit"``).
    - ``learn_sigma``: the original SiT's unused variance half (state dict only; not returned).
    - ``time_convention``: ``"repa"`` (t=0 data) or ``"sit"`` (the network's own t=1 is data; see the
      module docstring). A ``"sit"`` model is guided on three channels, as SiT's ``forward_with_cfg``.
    - ``transport``: the ``diffusion.sit_transport.create_transport`` arguments of a network trained with SiT's
      transport (path, target, eps); its ``prediction`` is then the target (velocity, score or noise).

    REPA's ``decoder_hidden_size`` is not an argument: it only sizes ``final_layer``, which reads
    the ``hidden_size`` tokens and conditioning, so any other value fails in ``forward`` (REPA's
    configs set it to ``hidden_size``; a leftover of its former decoder blocks). REPA's unused
    ``path_type`` and ``use_cfg`` are dropped too; ``fused_attn`` is moot (attention is always SDPA).
    """

    prediction = "velocity"  # what the samplers read it as (diffusion.denoiser)

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        encoder_depth: int = 8,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        z_dims: Sequence[int] = (768,),
        projector_dim: int = 2048,
        cls_token_dim: int | None = None,
        qk_norm: bool = False,
        learn_sigma: bool = False,
        bn_momentum: float | None = None,
        time_convention: str = "repa",
        transport: dict | None = None,
    ):
        super().__init__()
        z_dims = tuple(z_dims)
        check_sit_args(z_dims, encoder_depth, depth, cls_token_dim, time_convention, transport)
        self.transport = dict(transport) if transport else None
        self.prediction = self.transport["prediction"] if self.transport else "velocity"
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.z_dims = z_dims
        self.encoder_depth = encoder_depth
        self.cls_token_dim = cls_token_dim
        self.time_convention = time_convention
        if time_convention == "sit":
            self.guided_channels = DIT_GUIDED_CHANNELS

        # Registration order is REPA/REG's: it fixes the parameter order that optimizer states follow.
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos table (frozen, saved); REG's class token is token 0, with a zero row.
        num_tokens = num_patches + (cls_token_dim is not None)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm) for _ in range(depth)]
        )
        self.projectors = nn.ModuleList([build_mlp(hidden_size, projector_dim, z) for z in z_dims])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, cls_token_dim)
        if cls_token_dim is not None:
            self.cls_projectors2 = nn.Linear(cls_token_dim, hidden_size)
            self.wg_norm = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        if bn_momentum is not None:
            # REPA-E: the latents' normalisation, without affine parameters (they would let the denoising
            # loss shrink the latents); its running statistics start from the VAE's (init_bn)
            self.bn = nn.BatchNorm2d(in_channels, eps=1e-4, momentum=bn_momentum, affine=False)
        self.initialize_weights()

    def init_bn(self, latents_scale: torch.Tensor, latents_bias: torch.Tensor) -> None:
        """Start the latent BatchNorm from the latents' statistics (REPA-E ``init_bn``): running mean =
        ``latents_bias``, running variance = ``1 / latents_scale^2`` (any shape with C elements)."""
        self.bn.running_mean.copy_(latents_bias.flatten())
        self.bn.running_var.copy_(latents_scale.flatten().pow(-2))

    def extract_latents_stats(self) -> dict[str, torch.Tensor]:
        """``latents_scale = running_var^-1/2`` and ``latents_bias = running_mean``, shaped (1, C, 1, 1)
        (REPA-E ``extract_latents_stats``; its ``-latents-stats.pt`` files hold these)."""
        shape = (1, -1, 1, 1)
        return {"latents_scale": self.bn.running_var.rsqrt().view(shape),
                "latents_bias": self.bn.running_mean.view(shape)}

    def initialize_weights(self) -> None:
        """DiT's initialisation; REG's class token has a zero position embedding and ``linear_cls`` starts at zero."""
        init_dit_weights(self)

    unpatchify = DiT.unpatchify

    def bottleneck_module(self) -> nn.Module:
        """DMD2's GAN head reads the tokens after block depth / 2 (``diffusion.network``)."""
        return self.blocks[len(self.blocks) // 2 - 1]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cls_token: torch.Tensor | None = None,
        align_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """x: (N, C, H, W) noisy latents, t: (N,) times in [0, 1], y: (N,) labels, cls_token: (N, z_dims[0]) (REG).
        ``align_only``: stop after block ``encoder_depth`` and return ``(None, zs)`` (REPA-E's VAE step).

        Returns the (N, in_channels, H, W) prediction, the list of (N, T, z_dim) projector outputs
        after block ``encoder_depth`` (T + 1 tokens for REG), and for REG the (N, z_dims[0]) class
        token prediction. Labels are replaced by the null class ``num_classes`` with probability
        ``class_dropout_prob`` in training mode.
        """
        if self.cls_token_dim is not None and cls_token is None:
            raise ValueError("this is a REG model (cls_token_dim set): pass cls_token, the noisy class token")
        if self.cls_token_dim is None and cls_token is not None:
            raise ValueError(
                "cls_token given to a model without one; build it with cls_token_dim=z_dims[0] (REG)"
            )
        x = self.x_embedder(x)  # (N, T, D)
        if cls_token is not None:
            x = torch.cat([self.wg_norm(self.cls_projectors2(cls_token)).unsqueeze(1), x], dim=1)
        x = x + self.pos_embed
        data_at_one = self.time_convention == "sit"
        c = self.t_embedder(1 - t if data_at_one else t) + self.y_embedder(y)  # (N, D)
        zs = []
        for depth, block in enumerate(self.blocks, start=1):
            x = block(x, c)
            if depth == self.encoder_depth:
                zs = [projector(x) for projector in self.projectors]
                if align_only:
                    return None, zs
        out = self.final_layer(x, c)
        if cls_token is not None:
            out, cls_out = out
        out = self.unpatchify(out)[:, : self.in_channels]  # the original SiT drops the learned-sigma half
        if data_at_one:  # v(x, t) = -u(x, 1 - t)
            out = -out
        if cls_token is None:
            return out, zs
        return out, zs, (-cls_out if data_at_one else cls_out)


def sit_config(depth: int, hidden_size: int, patch_size: int, num_heads: int, **defaults):
    """A registry constructor: ``SiT_models[name](**kw)`` builds that size with any other SiT argument."""
    return partial(
        SiT, depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads, **defaults
    )


# DiT's four sizes (as in SiT, REPA, REG) with patch 1/2/4/8, and tiny ones for tests and the demo.
# REPA/REG's default encoder_depth is 8 (their README: 4 for B); the tiny ones default to about a third. The demo size's
# projector is 2x its width: REPA's 2048 would cost SiT-Demo four times its blocks (SiT-B's costs it 9%).
SiT_models = {
    **{f"SiT-XL/{p}": sit_config(28, 1152, p, 16) for p in (1, 2, 4, 8)},
    **{f"SiT-L/{p}": sit_config(24, 1024, p, 16) for p in (1, 2, 4, 8)},
    **{f"SiT-B/{p}": sit_config(12, 768, p, 12) for p in (1, 2, 4, 8)},
    **{f"SiT-S/{p}": sit_config(12, 384, p, 6) for p in (1, 2, 4, 8)},
    **{f"SiT-Ti/{p}": sit_config(2, 64, p, 4, encoder_depth=1) for p in (1, 2, 4)},
    **{f"SiT-Demo/{p}": sit_config(6, 128, p, 4, encoder_depth=2, projector_dim=256) for p in (1, 2, 4, 8)},
}
