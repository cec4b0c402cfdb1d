"""Loading weights for sampling: our checkpoints or the official DiT releases.

Official releases (``DiT-XL-2-256x256.pt``, ``DiT-XL-2-512x512.pt``) are raw state dicts;
ours are ``{model, ema, opt, args, steps, ...}`` and sampling uses ``ema``. A checkpoint of
ours also records the flags it was trained with, so ``--model``, ``--image-size``,
``--num-classes`` and ``--vae`` default to those.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from models import create_model
from training.checkpoint import load_checkpoint, load_weights, model_state_dict

OFFICIAL = {256: "DiT-XL-2-256x256.pt", 512: "DiT-XL-2-512x512.pt"}
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/DiT/models/{}"
PRETRAINED_DIR = Path(os.environ.get("DIFFUSION_LAB_PRETRAINED", "pretrained_models"))


def find_official(image_size: int) -> Path:
    """The official DiT-XL/2 file: in the working folder, in ``pretrained_models/``, or downloaded there."""
    if image_size not in OFFICIAL:
        raise ValueError(f"official DiT-XL/2 weights exist for --image-size 256 or 512, not {image_size}; "
                         "pass --ckpt for your own model")
    name = OFFICIAL[image_size]
    for candidate in (Path(name), PRETRAINED_DIR / name):
        if candidate.is_file():
            return candidate
    target = PRETRAINED_DIR / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(OFFICIAL_URL.format(name), str(target) + ".part", progress=True)
        os.replace(str(target) + ".part", target)
    except Exception:
        raise ValueError(f"{name} is not in ./ or {PRETRAINED_DIR}/ and cannot be downloaded; fetch "
                         f"{OFFICIAL_URL.format(name)} and put it in {PRETRAINED_DIR}/ (or pass --ckpt)") from None
    return target


def resolve_sampling_config(args) -> tuple[dict, dict]:
    """Fill ``model``, ``image_size``, ``num_classes`` and ``vae`` of ``args`` (None = unset)
    from the checkpoint's recorded flags, then from the official defaults.

    Returns the state dict to load and the resolved settings.
    """
    official = args.ckpt is None
    if official:
        if args.model not in (None, "DiT-XL/2"):
            raise ValueError("only DiT-XL/2 has official weights; pass --ckpt for other models")
        path = find_official(args.image_size or 256)
    else:
        path = Path(args.ckpt)
    ckpt = load_checkpoint(path)
    trained = ckpt.get("args", {}) if isinstance(ckpt, dict) and "args" in ckpt else {}
    if not isinstance(trained, dict):
        trained = vars(trained)
    defaults = {"model": "DiT-XL/2", "image_size": 256, "num_classes": 1000, "vae": args.default_vae}
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else trained.get(k, v)) for k, v in defaults.items()}
    return model_state_dict(ckpt, prefer="ema"), {**cfg, "ckpt": str(path)}


def build_for_sampling(state_dict: dict, cfg: dict, codec, device) -> torch.nn.Module:
    """Create the model for ``cfg`` and load ``state_dict`` strictly; error names the mismatch."""
    if cfg["image_size"] % 8 != 0:
        raise ValueError(f"--image-size {cfg['image_size']} is not divisible by 8")
    with torch.device("meta"):
        model = create_model(cfg["model"], input_size=cfg["image_size"] // codec.downsample,
                             num_classes=cfg["num_classes"], in_channels=codec.latent_channels)
    load_weights(model, state_dict, cfg["ckpt"], assign=True)
    return model.to(device).eval()
