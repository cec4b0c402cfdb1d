"""LoRA weights in the file layout DMD2 releases (``dmd2_sdxl_4step_lora_fp16.safetensors``, written by DMD2's
``main/sdxl/extract_lora_module.py``): kohya's names, ``lora_unet_{module path with _}.lora_down.weight`` (A),
``.lora_up.weight`` (B) and ``.alpha``, so that ``W = W + alpha / rank * up @ down`` (diffusers' ``fuse_lora`` at
scale 1). ``train_dmd2.py --generator_lora`` keeps peft's names (``{module}.lora_A.default.weight``); these functions
go between the two and merge either into plain weights.
"""

from __future__ import annotations

import torch

PREFIX = "lora_unet_"


def lora_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``up @ down`` in float32: a linear layer's ``B A``; a convolution's, with A (r, in, k, k) and a 1x1 B."""
    if down.ndim == 4:
        return torch.einsum("or,rikl->oikl", up[:, :, 0, 0].float(), down.float())
    return up.float() @ down.float()


def is_kohya_lora(state_dict: dict) -> bool:
    return any(key.startswith(PREFIX) for key in state_dict)


def kohya_from_peft(state_dict: dict, alpha: float, dtype: torch.dtype | None = None) -> dict:
    """DMD2's LoRA file of a peft-adapted UNet's state dict (its adapters only, as ``extract_lora_module.py``)."""
    out = {}
    for key, value in state_dict.items():
        for peft, kohya in ((".lora_A.default.", ".lora_down."), (".lora_B.default.", ".lora_up.")):
            if peft in key:
                module, name = key.split(peft)
                stem = PREFIX + module.replace(".", "_")
                out[f"{stem}{kohya}{name}"] = value.to(dtype or value.dtype)
                out[f"{stem}.alpha"] = torch.tensor(alpha, dtype=dtype or torch.float32)
    if not out:
        raise ValueError("no LoRA adapters in these weights (train_dmd2.py --generator_lora writes them)")
    return out


def merge_kohya(base: dict, lora: dict, module_names, source: str) -> dict:
    """``base`` (a UNet's plain state dict) with DMD2's LoRA file merged in: each adapted layer's
    ``W + alpha / rank * up @ down`` (a convolution's up is 1x1). ``module_names``: the UNet's module paths, which
    resolve kohya's underscored names."""
    modules = {PREFIX + name.replace(".", "_"): name for name in module_names if name}
    merged = dict(base)
    stems = {key.split(".")[0] for key in lora if key.startswith(PREFIX)}
    for stem in sorted(stems):
        if stem not in modules:
            raise ValueError(f"{source}: LoRA weights for {stem}, which this UNet has no layer for; pass the base "
                             "model they were trained on (--model_id)")
        weight = modules[stem] + ".weight"
        down, up = lora[f"{stem}.lora_down.weight"], lora[f"{stem}.lora_up.weight"]
        scale = float(lora.get(f"{stem}.alpha", torch.tensor(float(down.shape[0])))) / down.shape[0]
        merged[weight] = (base[weight].float() + scale * lora_delta(down, up)).to(base[weight].dtype)
    return merged
