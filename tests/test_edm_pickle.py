"""Reading EDM network pickles without running their code (models/edm_pickle.py). The snapshot fixture
was written by NVlabs/edm @ 008a4e5's own torch_utils.persistence (tests/fixtures/record_edm.py)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError
from diffusion.edm import edm_sampler
from models.edm_pickle import edm_from_pickle, load_edm_pickle
from models.edm_unet import EDMPrecond

FIXTURES = Path(__file__).parent / "fixtures"
SNAPSHOT = FIXTURES / "edm_tiny_snapshot.pkl"
REF = torch.load(FIXTURES / "edm_tiny_reference.pt")["snapshot"]


def edm_code_loaded() -> bool:
    """EDM's packages, or a module persistence made from pickled source, are imported."""
    return any(name in ("dnnlib", "torch_utils") or name.startswith("_imported_module_") for name in sys.modules)


def test_snapshot_loads_without_edm_code_and_gives_the_recorded_outputs():
    assert not edm_code_loaded()
    state_dict, init_kwargs = load_edm_pickle(SNAPSHOT)
    assert init_kwargs == {"class_name": "EDMPrecond", **REF["init_kwargs"]}  # incl. use_fp16, dropout 0.1
    reference = EDMPrecond(**REF["init_kwargs"]).state_dict()
    assert list(state_dict) == list(reference)  # torch's order: parameters, persistent buffers, submodules
    assert "model.enc.4x4_down.conv0.resample_filter" in state_dict
    net = edm_from_pickle(SNAPSHOT)
    assert not net.training and net.use_fp16 and net.model.enc["8x8_block0"].dropout == 0.1
    with torch.no_grad():
        out = net(REF["x"], REF["sigma"], REF["labels"])
    # float32 rounding of other CPU kernels (1.1e-6 on AVX2 against the AVX512 recording)
    torch.testing.assert_close(out, REF["out"], atol=1e-5, rtol=1e-5)
    assert not edm_code_loaded()  # nothing of EDM's was imported or run


def test_the_loaded_network_drives_the_edm_sampler():
    net = edm_from_pickle(SNAPSHOT)
    out = edm_sampler(net, torch.randn(3, 3, 8, 8), REF["labels"], num_steps=3)  # 0-d sigma, integer labels
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float64 and out.isfinite().all()


class RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_a_forbidden_global_is_refused(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": RunsAShellCommand(marker)}))
    with pytest.raises(CheckpointError, match=r"evil.pkl cannot be read .*refusing to load \w+\.system"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_an_unreadable_pickle_is_one_line_naming_the_file(tmp_path, capsys):
    """sample.py on a pickle the reader refuses, or on a partial download: one line that names the file, exit 2."""
    import sample
    from common.cli import run_cli

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ema": RunsAShellCommand(tmp_path / "ran")}))
    (tmp_path / "cut.pkl").write_bytes(SNAPSHOT.read_bytes()[:1000])
    for name, message in (("evil.pkl", "refusing to load"), ("cut.pkl", "download it again")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(sample.main, sample.parse_args(["--ckpt", str(tmp_path / name), "--output", str(tmp_path / "s.png")]))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert str(tmp_path / name) in err and message in err
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "ran").exists()


def test_files_that_are_not_edm_network_pickles_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_edm_pickle(tmp_path / "missing.pkl")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"net": [1, 2]}))
    with pytest.raises(ValueError, match="expected a dict with 'ema'"):
        load_edm_pickle(tmp_path / "plain.pkl")
    with pytest.raises(ValueError, match="EDM's EDMLoss; only EDMPrecond"):
        edm_from_pickle(SNAPSHOT, key="loss_fn")
