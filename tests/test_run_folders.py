"""Where train.py writes: resuming never touches an older run's history, and a failed start writes nothing."""

import hashlib
import importlib.util
import json
import sys

import pytest
import torch
from conftest import TINY_TRAIN, run_script

import train
from common.checkpoint import save_atomic

FLAGS = [*TINY_TRAIN, "--log-every", "1", "--ckpt-every", "2"]


def snapshot(folder):
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_of(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A run folder with checkpoints at steps 2 and 4 and a metrics record per step."""
    results = tmp_path_factory.mktemp("results")
    train.main(train.parse_args([*FLAGS, "--results-dir", str(results), "--max-steps", "4"]))
    return results / "000-DiT-Ti-4"


def test_resuming_an_older_checkpoint_starts_a_new_folder_and_leaves_the_old_one(four_steps, tmp_path):
    before = snapshot(four_steps)
    train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path), "--max-steps", "3",
                                 "--resume", str(four_steps / "checkpoints" / "0000002.pt")]))
    assert snapshot(four_steps) == before
    (new,) = tmp_path.iterdir()
    assert steps_of(new / "metrics.jsonl") == [1, 2, 3]  # the old run's records up to step 2, then its own
    assert sorted(p.name for p in (new / "checkpoints").iterdir()) == ["0000003.pt"]
    assert "in a new run folder" in (new / "log.txt").read_text()


def test_resuming_the_newest_checkpoint_continues_in_its_folder(tmp_path):
    train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path), "--max-steps", "3", "--ckpt-every", "2"]))
    run = tmp_path / "000-DiT-Ti-4"
    assert steps_of(run / "metrics.jsonl") == [1, 2, 3]  # step 3 was logged, but its checkpoint never written
    (run / "checkpoints" / "0000004.pt.tmp").write_bytes(b"a write that was killed")
    train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path), "--max-steps", "4", "--resume", str(run)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000-DiT-Ti-4"]
    assert steps_of(run / "metrics.jsonl") == [1, 2, 3, 4]  # step 3 once: redone from the step-2 checkpoint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002.pt", "0000003.pt", "0000004.pt"]
    assert "removed 1 partial checkpoint write" in (run / "log.txt").read_text()


def test_a_checkpoint_outside_a_run_folder_starts_a_new_run_folder(four_steps, tmp_path):
    loose = tmp_path / "downloads" / "x.pt"
    loose.parent.mkdir()
    loose.write_bytes((four_steps / "checkpoints" / "0000002.pt").read_bytes())
    train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path / "r"), "--max-steps", "3",
                                 "--resume", str(loose)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "r"]
    assert sorted(p.name for p in loose.parent.iterdir()) == ["x.pt"]
    (run,) = (tmp_path / "r").iterdir()
    assert torch.load(run / "checkpoints" / "0000003.pt", weights_only=False)["steps"] == 3


@pytest.mark.parametrize("content, needle", [
    ({"x_embedder.proj.weight": torch.zeros(1)}, "is not a train.py checkpoint"),  # a raw state dict
    ([1, 2, 3], "is not a train.py checkpoint"),
    (b"not a checkpoint", "could not be read"),
])
def test_resume_refuses_a_file_that_is_not_a_checkpoint(content, needle, tmp_path):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=needle):
        train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path / "r"), "--resume", str(path)]))
    assert not (tmp_path / "r").exists()


def test_max_steps_at_or_below_the_checkpoint_has_nothing_to_do(four_steps, tmp_path):
    before = snapshot(four_steps)
    with pytest.raises(ValueError, match="nothing to do: .* is at step 4 .* raise --max-steps"):
        train.main(train.parse_args([*FLAGS, "--results-dir", str(tmp_path), "--max-steps", "3",
                                     "--resume", str(four_steps)]))
    assert snapshot(four_steps) == before and not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, needle", [
    (["--vae", "/nonexistent/vae-folder"], "/nonexistent/vae-folder"),
    (["--gradient-accumulation-steps", "0"], "must be positive"),
    pytest.param(["--report-to", "tensorboard"], "pip install tensorboard", marks=pytest.mark.skipif(
        importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")),
])
def test_a_failed_start_writes_nothing(flags, needle, tmp_path):
    with pytest.raises(ValueError, match=needle):
        train.main(train.parse_args([*FLAGS, *flags, "--results-dir", str(tmp_path)]))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_results_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_script("train.py", *TINY_TRAIN, "--max-steps", "1", "--results-dir", str(tmp_path / "file" / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --results-dir {tmp_path / 'file' / 'runs'}: "
                                                   f"{tmp_path / 'file'} is a file, not a folder; choose another "
                                                   "--results-dir")


def test_nan_without_a_checkpoint_does_not_advise_resuming(tmp_path):
    with pytest.raises(train.NonFiniteLoss, match="no checkpoint was written yet: start again with a lower --lr"):
        train.main(train.parse_args([*TINY_TRAIN, "--results-dir", str(tmp_path), "--max-steps", "50",
                                     "--ckpt-every", "100", "--lr", "1e30"]))


def test_an_interrupted_atomic_write_leaves_nothing(tmp_path):
    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_atomic({"x": Boom()}, tmp_path / "0000001.pt")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_wandb_without_a_login_logs_offline_into_the_run_folder(tmp_path):
    home = tmp_path / "home"  # no ~/.netrc: never logged in
    proc = run_script("train.py", *TINY_TRAIN, "--max-steps", "2", "--report-to", "wandb",
                      "--results-dir", str(tmp_path / "r"),
                      env={"HOME": str(home), "WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "r" / "000-DiT-Ti-4"
    assert "no login found (run `wandb login` or set WANDB_API_KEY), so it logs offline" in proc.stdout
    assert list((run / "wandb").glob("offline-run-*"))
    assert not (tmp_path / "wandb").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["home", "r"]


def test_wandb_not_installed_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match="--report-to wandb needs the wandb package: pip install wandb"):
        train.main(train.parse_args([*FLAGS, "--report-to", "wandb", "--results-dir", str(tmp_path)]))
    assert not any(tmp_path.iterdir())
