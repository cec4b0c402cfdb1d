"""Model registry: one table of every architecture, ``create_model(name, **kw)``."""

from __future__ import annotations

from torch import nn

from models.dit import DiT_models
from models.sit import SiT_models
from models.unet import UNet_models

MODELS = {**DiT_models, **SiT_models, **UNet_models}
MODEL_NAMES = tuple(MODELS)


def create_model(name: str, **kw) -> nn.Module:
    """Build a registered model, e.g. ``create_model("DiT-XL/2", input_size=32, num_classes=1000)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](**kw)
