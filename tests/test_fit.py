"""The run lifecycle is written once (``training/fit.py``): every training entry point parses its flags,
builds its method and calls ``fit``; none sets up processes, builds an engine or opens a run folder itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# harnesses that drive the engine directly, by design: the tests and the throughput benchmarks
OUTSIDE = {"tests", "benchmarks", ".venv", ".git"}
TRAINING_SCRIPTS = ["train.py", "train_repae.py", "train_ldm_only.py", "train_dmd2.py",
                    "preprocessing/pretrain_vae.py", "examples/train_toy_gan.py"]


def sources() -> dict[Path, str]:
    return {p: p.read_text() for p in ROOT.rglob("*.py") if not OUTSIDE & set(p.relative_to(ROOT).parts)}


def calls(name: str) -> set[str]:
    """Files outside the harnesses that call ``name(``."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}\(|\.{re.escape(name)}\(")
    return {str(p.relative_to(ROOT)) for p, text in sources().items()
            if any(pattern.search(line) and not line.lstrip().startswith(("def ", "class ", "#"))
                   for line in text.splitlines())}


def test_the_engine_and_the_run_folder_are_made_inside_fit_only():
    assert calls("Engine") == {"training/fit.py"}
    assert calls("open_run") == {"training/fit.py"}
    assert calls("plan_run_folder") == {"training/fit.py"}


def test_no_training_script_sets_up_processes_itself():
    users = calls("setup_accelerator")
    assert not users & set(TRAINING_SCRIPTS), users & set(TRAINING_SCRIPTS)
    for script in TRAINING_SCRIPTS:
        assert "fit(" in (ROOT / script).read_text(), f"{script} does not train through fit"
