"""Command-line entry: bad input becomes one line on stderr and exit status 2, not a traceback.

Set ``DIFFUSION_LAB_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

from common.checkpoint import CheckpointError


def run_cli(main, args, extra: tuple[type[BaseException], ...] = ()) -> None:
    """Run ``main(args)``; on success the process group it joined is torn down before the interpreter exits (a
    gloo or NCCL group left to the interpreter's teardown can abort the process after the work is done)."""
    try:
        main(args)
        destroy_process_group()
    except (ValueError, CheckpointError, OSError, pickle.UnpicklingError, *extra) as e:
        if os.environ.get("DIFFUSION_LAB_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1 if isinstance(e, extra) else 2)


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. An OS error names the path and what to check; errors raised in
    DataLoader workers carry the worker's traceback, of which the last line is kept."""
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.strerror or type(e).__name__}: {e.filename} (check the path and its permissions)"
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return message.removeprefix(f"{type(e).__name__}: ")


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """One line, before anything is written, when ``path`` cannot be (or become) a folder this process
    writes in: a file on the way to it, or no permission where it would be made."""
    target = Path(path).absolute()
    for folder in (target, *target.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise ValueError(f"{flag} {path}: {folder} is a file, not a folder; choose another {flag}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: no permission to write in {folder}; choose another {flag}")
        return


def check_plain_name(name: str, flag: str) -> None:
    """A plain file name for ``flag``: no folders, nothing that leads out of the folder it names a file in."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"{flag} {name!r}: give a plain name without folders (choose the folder with its own flag)")


def none_or_str(value: str) -> str | None:
    """A flag value where the word ``None`` means None (SiT's ``--loss-weight None``, ``--last-step None``)."""
    return None if value == "None" else value


def require_positive(args: argparse.Namespace, *names: str, flag=lambda name: "--" + name.replace("_", "-")) -> None:
    """One line for the first of the flags ``names`` whose value is not positive (None: not given)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"{flag(name)} must be positive{' (at least 1)' if isinstance(value, int) else ''}, "
                             f"not {value}")


def first_paragraph(doc: str) -> str:
    """A script's ``--help`` description: the first paragraph of its docstring, as one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def add_local_rank(p: argparse.ArgumentParser) -> None:
    """``--local-rank`` / ``--local_rank``, which ``python -m torch.distributed.launch`` passes (REG's eval.sh):
    accepted, and ``use_local_rank`` sets ``LOCAL_RANK`` from it where the launcher did not."""
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=-1,
                   help="torch.distributed.launch's rank on this node (torchrun and accelerate launch set LOCAL_RANK "
                   "instead)")


def use_local_rank(args: argparse.Namespace) -> None:
    """``LOCAL_RANK`` from ``--local-rank`` when the environment has none (what accelerate reads)."""
    if args.local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
