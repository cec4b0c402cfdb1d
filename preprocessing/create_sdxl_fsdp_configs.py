"""accelerate launch configs for DMD2's multi-node SDXL runs (DMD2's ``main/sdxl/create_sdxl_fsdp_configs.py``, its
flags): ``{folder}/config_rank{i}.yaml`` for machine i of ``--num_machines``, 8 processes a machine.

  python preprocessing/create_sdxl_fsdp_configs.py --folder fsdp_configs/EXP_NAME --master_ip $MASTER_IP \\
      --num_machines 8 --sharding_strategy 4
  accelerate launch --config_file fsdp_configs/EXP_NAME/config_rank$NODE_RANK.yaml train_dmd2.py ... --fsdp

The files are DMD2's (``distributed_type: FSDP``, its ``fsdp_config``), so DMD2's own scripts read them too. Here
``accelerate launch`` takes from them the machines, processes, rank and rendezvous; the sharding is
``train_dmd2.py --fsdp``'s (FSDP2's ``fully_shard`` of every transformer block or UNet, full shards; weights
broadcast from process 0 at the start, so DMD2's "save and reload checkpoint 0" has nothing left to fix);
``fsdp_config`` asks accelerate for nothing the scripts read. ``--sharding_strategy`` is recorded as DMD2 records it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402

STRATEGIES = ("1", "2", "3", "4", "5")  # FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, HYBRID_SHARD_ZERO2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--folder", type=str, required=True, help="where the config files go")
    p.add_argument("--master_ip", type=str, required=True, help="machine 0's address")
    p.add_argument("--num_machines", type=int, default=8)
    p.add_argument("--sharding_strategy", choices=STRATEGIES, default="1", help="DMD2's FSDP strategy: 1-5 "
                   "FULL_SHARD / SHARD_GRAD_OP / NO_SHARD / HYBRID_SHARD / HYBRID_SHARD_ZERO2")
    p.add_argument("--processes_per_machine", type=int, default=8, help="GPUs a machine (DMD2's 8)")
    return p.parse_args(argv)


def config(rank: int, args: argparse.Namespace) -> dict:
    """Machine ``rank``'s config, DMD2's keys and values."""
    return {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "FSDP", "downcast_bf16": "no",
        "fsdp_config": {"fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_backward_prefetch_policy": "BACKWARD_PRE",
                        "fsdp_forward_prefetch": False, "fsdp_min_num_params": 50_000_000,
                        "fsdp_offload_params": False, "fsdp_sharding_strategy": args.sharding_strategy,
                        "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_sync_module_states": True,
                        "fsdp_use_orig_params": False},
        "machine_rank": rank, "main_process_ip": args.master_ip, "main_process_port": 2345,
        "main_training_function": "main", "mixed_precision": "no", "num_machines": args.num_machines,
        "num_processes": args.processes_per_machine * args.num_machines, "rdzv_backend": "static",
        "same_network": True, "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False, "use_cpu": False,
    }


def main(args: argparse.Namespace) -> None:
    if args.num_machines < 1 or args.processes_per_machine < 1:
        raise ValueError("--num_machines and --processes_per_machine must be positive")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for rank in range(args.num_machines):
        (folder / f"config_rank{rank}.yaml").write_text(yaml.safe_dump(config(rank, args), default_flow_style=False))
    print(f"wrote {args.num_machines} accelerate config(s) to {folder}: accelerate launch --config_file "
          f"{folder}/config_rank<machine>.yaml train_dmd2.py ... --fsdp")


if __name__ == "__main__":
    run_cli(main, parse_args())
