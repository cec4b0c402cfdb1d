"""DMD2's multi-node launch: ``create_sdxl_fsdp_configs.py`` writes DMD2's accelerate configs, and ``accelerate
launch --config_file`` with one runs a training script sharded with this repository's FSDP2 (accelerate's own FSDP
plugin stays off: one path), or refuses in one line where the script does not shard."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import ROOT

from preprocessing import create_sdxl_fsdp_configs


def test_configs_are_dmd2s(tmp_path):
    """Every key and value of DMD2's create_sdxl_fsdp_configs.py, one file a machine with its rank."""
    create_sdxl_fsdp_configs.main(create_sdxl_fsdp_configs.parse_args([
        "--folder", str(tmp_path), "--master_ip", "10.0.0.1", "--num_machines", "8", "--sharding_strategy", "4"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"config_rank{i}.yaml" for i in range(8))
    config = yaml.safe_load((tmp_path / "config_rank3.yaml").read_text())
    assert config == {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "FSDP", "downcast_bf16": "no",
        "fsdp_config": {"fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_backward_prefetch_policy": "BACKWARD_PRE",
                        "fsdp_forward_prefetch": False, "fsdp_min_num_params": 50000000, "fsdp_offload_params": False,
                        "fsdp_sharding_strategy": "4", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                        "fsdp_sync_module_states": True, "fsdp_use_orig_params": False},
        "machine_rank": 3, "main_process_ip": "10.0.0.1", "main_process_port": 2345, "main_training_function": "main",
        "mixed_precision": "no", "num_machines": 8, "num_processes": 64, "rdzv_backend": "static", "same_network": True,
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False, "use_cpu": False}


def test_an_fsdp_launch_shards_where_the_script_can(monkeypatch):
    """The plugin's variables are taken out of the environment before accelerate reads them; a script with --fsdp
    shards, one without is refused."""
    from common.setup import take_fsdp_launch
    from training.fit import Checkpoints, Grids, RunSpec, fsdp_config_sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "4")
    monkeypatch.setenv("DIFFUSION_LAB_FSDP_LAUNCH", "0")  # so that the launch's mark is removed after the test
    take_fsdp_launch()
    assert "ACCELERATE_USE_FSDP" not in os.environ and "FSDP_SHARDING_STRATEGY" not in os.environ
    spec = RunSpec("r", "x", Checkpoints(every=1), Grids(every=1), record={}, shard_flag="--fsdp")
    assert "sharded as --fsdp shards them" in fsdp_config_sharding(spec) and spec.shard
    with pytest.raises(ValueError, match="asks for FSDP .* which this script does not do"):
        fsdp_config_sharding(RunSpec("r", "x", Checkpoints(every=1), Grids(every=1), record={}))


@pytest.mark.multiprocess
def test_dmd2s_accelerate_launch_with_its_fsdp_config_trains(trained_run, tmp_path):
    """accelerate launch --config_file <DMD2's config for one machine of 2 processes> train_dmd2.py: two processes,
    sharded, a checkpoint of whole weights."""
    import subprocess
    import sys

    from common.checkpoint import load_checkpoint

    create_sdxl_fsdp_configs.main(create_sdxl_fsdp_configs.parse_args([
        "--folder", str(tmp_path / "fsdp"), "--master_ip", "127.0.0.1", "--num_machines", "1",
        "--processes_per_machine", "2", "--sharding_strategy", "1"]))
    config = tmp_path / "fsdp" / "config_rank0.yaml"
    config.write_text(config.read_text().replace("main_process_port: 2345", "main_process_port: 29543"))
    teacher = sorted((trained_run / "checkpoints").glob("*.pt"))[-1]
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "train_dmd2.py",
         "--teacher", str(teacher), "--output_path", str(out), "--dataset", "builtin", "--batch_size", "4",
         "--num_workers", "0", "--train_iters", "2", "--log_iters", "2", "--wandb_iters", "2", "--warmup_step", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = list(out.iterdir())
    log = (run / "log.txt").read_text()
    assert "2 process(es)" in log and "sharded as --fsdp shards them" in log
    ckpt = load_checkpoint(run / "checkpoints" / "0000002.pt")
    single = load_checkpoint(teacher)["ema"]
    assert {k: tuple(v.shape) for k, v in ckpt["model"].items()} == {k: tuple(v.shape) for k, v in single.items()}
