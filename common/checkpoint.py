"""Training checkpoints: atomic writes, exact-resume state, and which checkpoint a run resumes.

A checkpoint is ``{model, ema, opt, args, steps, rng, data}``. ``rng`` holds one entry
per process (torch, CUDA, numpy and python states) so every rank resumes its own
stream; ``data`` holds the epoch and the number of samples already consumed in it.
Files are written to ``<name>.tmp`` and renamed, so an interrupted save never
leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what to do."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file, with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign files raise many types
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                              "it may be truncated: use an earlier checkpoint") from None


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an interrupted write leaves nothing behind (a killed process: remove_partial_writes)
        tmp.unlink(missing_ok=True)
        raise


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file to ``dst`` through a temporary file and an atomic rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text``, or (interrupted) what it held before."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def keep_newest(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``NNNNNNN.pt`` checkpoints in ``folder``; returns what was removed."""
    found = sorted(Path(folder).glob("[0-9]*.pt"), key=lambda p: int(p.stem))
    stale = found[: max(0, len(found) - keep)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp`` files a killed ``save_atomic`` left in ``folder``; returns what was removed."""
    stale = sorted(Path(folder).glob("*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def rng_state() -> dict:
    """The random state of this process (torch, CUDA, numpy, python)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


TRAINING_KEYS = ("model", "ema", "opt", "args", "steps")


def load_training_checkpoint(path: str | os.PathLike, keys: tuple[str, ...] = TRAINING_KEYS,
                             script: str = "train.py") -> dict:
    """A checkpoint ``script`` can resume (it holds ``keys``): ``load_checkpoint`` plus a one-line error for any
    other file."""
    ckpt = load_checkpoint(path)
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        keys = [str(k) for k in ckpt] if isinstance(ckpt, dict) else []
        held = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") if keys else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a {script} checkpoint (no {', '.join(missing)}; it holds {held}): "
                              "--resume takes a file from a run's checkpoints/ folder, or the run folder itself")
    return ckpt


def latest_checkpoint(run_dir: str | os.PathLike, subdir: str = "checkpoints") -> Path | None:
    """The newest ``{subdir}/NNNNNNN.pt`` in a run folder (``checkpoints_overfit`` in overfit mode), or None."""
    ckpts = sorted(Path(run_dir, subdir).glob("[0-9]*.pt"))
    return ckpts[-1] if ckpts else None


def resolve_resume(path: str | os.PathLike, subdir: str = "checkpoints") -> Path:
    """``--resume`` accepts a checkpoint file or a run folder (its newest checkpoint in ``subdir``)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path, subdir)
        if found is None:
            raise CheckpointError(f"--resume {path}: no {subdir}/NNNNNNN.pt in this run folder")
        return found
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file or run folder")
    return path
