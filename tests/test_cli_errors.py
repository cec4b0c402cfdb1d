"""Every bad input gives one line on stderr and a non-zero exit: no traceback, nothing lost."""

import numpy as np
import pytest
from conftest import ROOT, TINY_TRAIN, run_script
from PIL import Image


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def make_folder(root, n=2, corrupt=False):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    return root


@pytest.mark.parametrize("flags,needles", [
    (["--data-path", "/nonexistent/imagenet"], ["/nonexistent/imagenet"]),
    (["--dataset", "builtin", "--model", "DiT-XXL/2"], ["DiT-XXL/2", "DiT-XL/2"]),
    (["--dataset", "builtin", "--image-size", "30"], ["divisible by 8"]),
    ([], ["--data-path"]),
])
@pytest.mark.slow
def test_train_rejects_bad_flags(flags, needles, tmp_path):
    proc = run_script("train.py", "--results-dir", str(tmp_path), "--vae", "none", *flags)
    assert_one_line_error(proc, *needles)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_train_rejects_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_script("train.py", "--data-path", str(tmp_path / "empty"), "--vae", "none",
                      "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, str(tmp_path / "empty"))


@pytest.mark.slow
def test_train_names_a_corrupt_image(tmp_path):
    root = make_folder(tmp_path / "data", n=4, corrupt=True)
    proc = run_script("train.py", "--data-path", str(root), "--vae", "none", "--model", "DiT-Ti/4",
                      "--image-size", "16", "--num-classes", "2", "--global-batch-size", "9",
                      "--num-workers", "0", "--max-steps", "3", "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, "broken.jpg")


def test_sample_rejects_a_checkpoint_of_another_model(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "0000020.pt"
    proc = run_script("sample.py", "--ckpt", str(ckpt), "--model", "DiT-Ti/2", "--output", str(tmp_path / "s.png"))
    assert_one_line_error(proc, "holds a DiT-Ti/4", "not a DiT-Ti/2", "leave out --model")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.slow
def test_sample_rejects_a_missing_checkpoint(tmp_path):
    proc = run_script("sample.py", "--ckpt", str(tmp_path / "nope.pt"))
    assert_one_line_error(proc, "nope.pt")


@pytest.mark.slow
def test_resume_with_other_flags_is_refused(trained_run, tmp_path):
    proc = run_script("train.py", *TINY_TRAIN, "--model", "DiT-Ti/2", "--resume", str(trained_run),
                      "--max-steps", "30")
    assert_one_line_error(proc, "--model")


def test_other_os_errors_are_one_line_naming_the_path():
    from common.cli import one_line

    error = PermissionError(13, "Permission denied", "/data/locked")
    assert one_line(error) == "Permission denied: /data/locked (check the path and its permissions)"


@pytest.mark.parametrize("flags,needle", [
    (["--batch-size", "0"], "--batch-size must be positive (at least 1), not 0"),
    (["--checkpointing-steps", "-5"], "--checkpointing-steps must be positive"),
    (["--max-train-steps", "0"], "--max-train-steps must be positive"),
])
def test_repae_refusals_name_repae_s_own_flags(flags, needle):
    """A refused count is named as REPA-E spells it, not by its destination (global_batch_size, ckpt_every)."""
    from methods.repae_cli import parse_args, validate

    with pytest.raises(ValueError) as error:
        validate(parse_args(["--exp-name", "x", "--dataset", "builtin", *flags]))
    assert needle in str(error.value)


def test_a_finished_script_tears_its_process_group_down(tmp_path):
    """A script run through run_cli leaves no process group for the interpreter's teardown (where gloo and NCCL
    can abort a finished run)."""
    import torch.distributed as dist

    from common.cli import run_cli

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    run_cli(lambda args: dist.barrier(), None)
    assert not dist.is_initialized()



def test_every_script_in_a_folder_runs_by_its_path():
    """``python preprocessing/X.py`` (and evaluations/, benchmarks/) works from the repository root, as the originals'
    commands call their scripts: a script that imports this repository's packages at its top puts the root on
    ``sys.path`` first (checked in the source: starting a Python for each script costs a minute). Run as one, by its
    path, a script whose first such import came first fails with ModuleNotFoundError."""
    import ast

    packages = {"common", "diffusion", "models", "loss", "imagedata", "evaluations", "training", "methods",
                "preprocessing", "demo"}
    by_module = {"proxy.py", "watch.py", "watch_text.py"}  # python -m evaluations.watch[_text], as DMD2's
    for folder in ("preprocessing", "evaluations", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            source = path.read_text()
            if "__main__" not in source or path.name in by_module:
                continue
            path_set = False
            for node in ast.parse(source).body:
                if isinstance(node, (ast.Expr, ast.If)) and "sys.path.insert" in ast.unparse(node):
                    path_set = True
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(name.split(".")[0] in packages for name in names):
                    assert path_set, f"{folder}/{path.name} imports {names[0]} before putting the root on sys.path"
