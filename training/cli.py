"""Command-line entry: bad input becomes one line on stderr and exit status 2, not a traceback.

Set ``DIFFUSION_LAB_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import os
import sys

from training.checkpoint import CheckpointError


def run_cli(main, args, extra: tuple[type[BaseException], ...] = ()) -> None:
    try:
        main(args)
    except (ValueError, CheckpointError, FileNotFoundError, *extra) as e:
        if os.environ.get("DIFFUSION_LAB_DEBUG"):
            raise
        # Errors raised in DataLoader workers carry the worker's traceback: keep the last line.
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        message = message.removeprefix(f"{type(e).__name__}: ")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1 if isinstance(e, extra) else 2)
