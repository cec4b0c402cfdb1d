"""Weights a DMD2 run starts from besides the teacher: ``--ckpt_only_path`` (the generator and the guidance
model, without optimizer states) and ``--generator_ckpt_path`` (the generator). Both read DMD2's checkpoint
folders (``checkpoint_model_NNNNNN/`` with ``pytorch_model.bin``, the generator, and ``pytorch_model_1.bin``,
the guidance model) as well as ``train_dmd2.py`` checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import CheckpointError, load_checkpoint, load_training_checkpoint
from models.weights import load_weights

HINT = ("Pass weights distilled from this --teacher, with the same --generator_lora flag and a GAN head only if "
        "this run has one (a run may add the head, not drop it)")
GUIDANCE_PARTS = ("fake_unet.", "cls_pred_branch.")  # DMD2's guidance file also holds the teacher (real_unet.)
# What a second stage may add to the weights it continues from (DMD2's best models: --gan_classifier on ImageNet,
# --cls_on_clean_image --gen_cls_loss on SD1.5, from a run without the GAN head): the head starts fresh.
ADDABLE = {"cls_pred_branch.": "the GAN head"}


def dmd2_folder_file(folder: Path, name: str, flag: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{flag} {folder}: no {name} in this folder; pass a DMD2 checkpoint folder "
                              "(checkpoint_model_NNNNNN/) or a train_dmd2.py checkpoint")
    return load_checkpoint(path)


def dmd2_folder_step(folder: Path, flag: str) -> int:
    """The step in a DMD2 checkpoint folder's name, ``checkpoint_model_NNNNNN``, as DMD2 reads it."""
    tail = folder.name.split("_")[-1]
    if not tail.isdigit():
        raise CheckpointError(f"{flag} {folder}: DMD2 checkpoint folders are named checkpoint_model_NNNNNN (the "
                              "step); rename the folder so its name ends in the step")
    return int(tail)


def weights_only(path: str) -> tuple[dict, dict, int]:
    """``(generator, guidance, step)`` of ``--ckpt_only_path``."""
    path = Path(path)
    if path.is_dir():
        generator = dmd2_folder_file(path, "pytorch_model.bin", "--ckpt_only_path")
        guidance = dmd2_folder_file(path, "pytorch_model_1.bin", "--ckpt_only_path")
        guidance = {k: v for k, v in guidance.items() if k.startswith(GUIDANCE_PARTS)}
        return generator, guidance, dmd2_folder_step(path, "--ckpt_only_path")
    ckpt = load_training_checkpoint(path, ("model", "guidance", "steps"), "train_dmd2.py")
    return ckpt["model"], ckpt["guidance"], int(ckpt["steps"])


def generator_weights(path: str, flag: str = "--generator_ckpt_path") -> dict:
    """The generator's weights of ``--generator_ckpt_path``: a state dict file, a DMD2 checkpoint folder or a
    ``train_dmd2.py`` / ``train_sd_ode.py`` checkpoint (its ``model``)."""
    path = Path(path)
    ckpt = dmd2_folder_file(path, "pytorch_model.bin", flag) if path.is_dir() else load_checkpoint(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and ("guidance" in ckpt or "args" in ckpt):
        return ckpt["model"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{flag} {path}: neither a state dict nor a train_dmd2.py / train_sd_ode.py checkpoint")
    return ckpt


def export_dmd2_folder(state: dict, run_dir: Path, step: int, keep_only: bool = False) -> list[Path]:
    """A checkpoint in DMD2's layout too: ``{run folder}/checkpoint_model_{step:06d}/`` with ``pytorch_model.bin``
    (the generator's weights) and ``pytorch_model_1.bin`` (the guidance model's, where the run has one), which
    DMD2's evaluation and
    ``--ckpt_only_path`` / ``--generator_ckpt_path`` read; ``keep_only``: the older such folders go (DMD2's
    ``--delete_ckpts``)."""
    import shutil

    from common.checkpoint import save_atomic

    folder = Path(run_dir) / f"checkpoint_model_{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [path for key, path in (("model", folder / "pytorch_model.bin"),
                                    ("guidance", folder / "pytorch_model_1.bin")) if key in state]
    for key, path in zip(("model", "guidance"), files):
        save_atomic(state[key], path)
    if keep_only:
        for old in Path(run_dir).glob("checkpoint_model_*"):
            if old != folder and old.is_dir():
                shutil.rmtree(old)
    return files


def with_unet_level(weights: dict, own: dict, prefix: str) -> dict:
    """DMD2 names a diffusers UNet's weights without our ``DiffusersEps`` level: ``{prefix}x`` becomes
    ``{prefix}unet.x`` where the module has that level and ``weights`` do not."""
    inner = prefix + "unet."
    if not any(k.startswith(inner) for k in own) or any(k.startswith(inner) for k in weights):
        return weights
    return {(inner + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in weights.items()}


def load_into(module: torch.nn.Module, weights: dict, source: str, addable: tuple[str, ...] = ()) -> list[str]:
    """A strict load, DMD2's diffusers names matched: the generator's UNet, the guidance model's ``fake_unet``.
    A part of ``module`` named by a prefix in ``addable`` of which ``weights`` hold nothing keeps its fresh
    initialisation (DMD2 loads non-strictly; here only such added parts may be missing). Returns those prefixes."""
    own = module.state_dict()
    for prefix in ("", "fake_unet."):
        weights = with_unet_level(weights, own, prefix)
    added = [p for p in addable if any(k.startswith(p) for k in own) and not any(k.startswith(p) for k in weights)]
    fresh = {k: v for k, v in own.items() if k.startswith(tuple(added))}
    load_weights(module, {**fresh, **weights}, source, hint=HINT)
    return added
