"""The network contract: what samplers, losses and methods read off a denoising network.

A network of this repository declares, as class or instance attributes:

- ``prediction``: ``"eps"`` (DiT, the U-Net, a diffusers UNet), ``"velocity"`` (SiT / REPA / REG) or ``"x0"``
  (EDM's preconditioned networks); ``diffusion.denoiser`` reads the network by it;
- ``learn_sigma``: an eps network that also outputs DDPM's variance interpolation (DiT's default);
- ``guided_channels``: the leading channels classifier-free guidance acts on (DiT: 3), else all;
- ``y_embedder``: a ``LabelEmbedder`` whose table has a row beyond the classes when the network learned the null
  class (label dropout > 0), which guidance needs;
- ``cls_token_dim``: REG's class token;
- ``bn``: REPA-E's ``BatchNorm2d(affine=False)`` of the latents (the network samples normalised latents);
- ``generator_sigmas``: a distilled few-step generator's noise levels (DMD2);
- ``unit_noise``: such a generator's top-level input is unit noise, not pure noise at its top level's variance
  (DMD2's Stable Diffusion generators, as diffusers' pipelines start);
- ``alphas_cumprod``: an eps network's own abar table (float64, 1000 steps), where it is none of the named noise
  schedules (a diffusers UNet carries its scheduler's); samplers read it instead of ``--noise-schedule``'s;
- ``transport``: a SiT trained with SiT's own transport: its ``create_transport`` arguments (path, target, eps);
- ``bottleneck_module()``: the module whose output DMD2's GAN head reads.

``contract(model)`` is the one reader: it looks through DDP, DataParallel and ``torch.compile`` (which forward
calls, not attributes) to the network itself. A plain callable (a sampler's model function) has the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

PREDICTIONS = ("eps", "velocity", "x0")


def unwrap(model):
    """``model`` without DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class Contract:
    """What a network declares (see the module docstring); ``null_class`` is the null label, None without one."""

    prediction: str | None
    learn_sigma: bool
    guided_channels: int | None
    null_class: int | None
    cls_token_dim: int | None
    latent_norm: nn.Module | None
    generator_sigmas: tuple[float, ...] | None
    transport: dict | None = None
    unit_noise: bool = False
    alphas_cumprod: object = None  # a float64 array

    @property
    def sit_only(self) -> bool:
        """A SiT whose transport only SiT's samplers read: the VP path, or a score or noise target."""
        return bool(self.transport) and (self.transport.get("path_type") == "VP" or
                                         self.transport.get("prediction", "velocity") != "velocity")

    @property
    def learned_variance(self) -> bool:
        """Whether DDPM samples the network with its learned variance (an eps network with ``learn_sigma``)."""
        return self.prediction in (None, "eps") and self.learn_sigma


def contract(model) -> Contract:
    """The contract of ``model`` (under any training wrapper)."""
    net = unwrap(model)
    embedder = getattr(net, "y_embedder", None)  # EDM's networks have none (label dropout 0)
    learned_null = embedder is not None and embedder.embedding_table.num_embeddings > embedder.num_classes
    sigmas = getattr(net, "generator_sigmas", None)
    return Contract(
        prediction=getattr(net, "prediction", None),
        learn_sigma=bool(getattr(net, "learn_sigma", True)),
        guided_channels=getattr(net, "guided_channels", None),
        null_class=embedder.num_classes if learned_null else None,
        cls_token_dim=getattr(net, "cls_token_dim", None) or None,
        latent_norm=latent_norm(net),
        generator_sigmas=tuple(sigmas) if sigmas else None,
        transport=getattr(net, "transport", None) or None,
        unit_noise=bool(getattr(net, "unit_noise", False)),
        alphas_cumprod=getattr(net, "alphas_cumprod", None),
    )


def latent_norm(model) -> nn.Module | None:
    """The network's latent normalisation (``bn``; None without one): the part of the contract the loss reads
    every step."""
    return getattr(unwrap(model), "bn", None)


def bottleneck_module(model) -> nn.Module:
    """The module whose output DMD2's GAN head reads (the network's ``bottleneck_module()``)."""
    net = unwrap(model)
    if not hasattr(net, "bottleneck_module"):
        raise ValueError(f"{type(net).__name__} declares no bottleneck_module() for DMD2's GAN head")
    return net.bottleneck_module()
