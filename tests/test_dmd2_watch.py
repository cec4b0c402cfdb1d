"""DMD2's continuous evaluation (main/edm/test_folder_edm.py) here: ``python -m evaluations.watch`` scores every
checkpoint of a run folder, DMD2's checkpoint_model_NNNNNN/ folders and ours, with DMD2's protocol, keeps the
results in stats.json and skips what is scored (a stand-in Inception: the wiring is what is tested)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_stand_in import StandInInception

from evaluations import watch


@pytest.fixture
def run(edm_generator_run, tmp_path) -> Path:
    """A copy of the session's DMD2 run folder: the evaluation writes stats.json and grids into it."""
    import shutil

    return Path(shutil.copytree(edm_generator_run, tmp_path / edm_generator_run.name))


def args_for(run: Path, ref: Path, *extra: str):
    from models.pretrained import Query, sampling_config

    _, cfg = sampling_config(Query(ckpt=str(run / "checkpoints" / "0000002.pt")))
    return watch.parse_args(["--folder", str(run), "--ref_path", str(ref), "--resolution", str(cfg["image_size"]),
                             "--label_dim", str(cfg["num_classes"]), "--total_eval_samples", "6",
                             "--eval_batch_size", "4", "--test_visual_batch_size", "4", "--once", *extra])


def test_every_checkpoint_is_scored_once_and_kept_in_stats_json(run, tmp_path, monkeypatch):
    import evaluations.inception

    monkeypatch.setattr(evaluations.inception, "load_inception", lambda *a, **k: StandInInception())
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(16), sigma=np.eye(16))
    stats = watch.main(args_for(run, ref, "--detector_url", "inception-2015-12-05.pkl"))
    # the run saved step 2 in both layouts (--checkpoint_layout dmd2): scored once, as DMD2's folder
    assert [Path(name).name for name in stats] == ["checkpoint_model_000002"]
    ours = tmp_path / "ours" / "checkpoints"
    ours.mkdir(parents=True)
    (ours / "0000002.pt").symlink_to(run / "checkpoints" / "0000002.pt")
    assert list(watch.checkpoints(ours.parent).values()) == [(2, ours / "0000002.pt")]  # this layout alone
    assert [path.name for _, path in watch.checkpoints(run).values()] == ["pytorch_model.bin"]
    assert all(np.isfinite(entry["fid"]) for entry in stats.values())
    assert json.loads((run / "stats.json").read_text()) == stats and (run / "eval_grid_000002.png").is_file()
    calls = []
    monkeypatch.setattr(watch, "generate_images", lambda *a: calls.append(a) or np.zeros((6, 8, 8, 3), np.uint8))
    assert watch.main(args_for(run, ref)) == stats and not calls  # scored: skipped
    watch.main(args_for(run, ref, "--no_resume"))
    assert len(calls) == 1


def test_the_images_follow_dmd2s_protocol(run, tmp_path):
    """Seed 10 on one process, labels 0, 1, 2, ... in turn, one step from sigma 80, uint8 by truncation."""
    from accelerate.utils import set_seed

    from common.setup import setup_accelerator
    from models.pretrained import Query, build_for_sampling, load_codec, sampling_config

    path = run / "checkpoint_model_000002" / "pytorch_model.bin"
    args = args_for(run, tmp_path / "unused.npz")
    images = watch.generate_images(path, args, setup_accelerator())
    state_dict, cfg = watch.generator_config(path, run)
    assert cfg == sampling_config(Query(ckpt=str(run / "checkpoints" / "0000002.pt")))[1]  # the run's own network
    net = build_for_sampling(state_dict, cfg, load_codec(cfg, "cpu"), "cpu")
    set_seed(10)
    expected, labels = [], torch.arange(12) % cfg["num_classes"]
    with torch.no_grad():
        for start in (0, 4):
            noise = torch.randn(4, 3, cfg["image_size"], cfg["image_size"])
            x = net(noise * 80, torch.full((4,), 80.0), torch.eye(cfg["num_classes"])[labels[start:start + 4]])
            expected.append(((x + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    expected = np.concatenate(expected)[:6]
    assert images.shape == expected.shape and np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_the_grid_takes_what_there_is():
    """--test_visual_batch_size 100 with fewer images (a short evaluation): the largest square of them."""
    assert watch.grid(np.zeros((4, 8, 8, 3), np.uint8), 100).shape == (16, 16, 3)
    assert watch.grid(np.zeros((120, 8, 8, 3), np.uint8), 100).shape == (80, 80, 3)
