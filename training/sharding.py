"""FSDP2 for the training engine: shard a network over all processes with ``fully_shard`` and move full
state dicts in and out of it (``torch.distributed.checkpoint.state_dict``).

Each of a network's transformer blocks (``module.blocks``, as DiT and SiT have) is its own shard
unit, then the network itself: a block's parameters are gathered just before it runs and freed after.
Works over NCCL and over gloo, so the CPU tests exercise the same path as GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # saving: the whole tensors, on the main process
FULL_IN = StateDictOptions(full_state_dict=True)  # every process holds the whole state dict


def shard_module(module: torch.nn.Module, optimizers=()) -> None:
    """``fully_shard`` the blocks of ``module`` and then ``module`` over all processes, in place, from the main
    process's weights (each process may have initialised its own, as DDP allows); the
    ``optimizers`` that hold its parameters are pointed at the sharded ones (same order). Sub-networks a
    module lists in ``fsdp_units`` (called on their own, not only through the module's forward: DMD2's
    fake score and GAN head) become shard units first, each with its blocks."""
    device = next(module.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for tensor in [*module.parameters(), *module.buffers()]:  # every process starts from rank 0's, as under DDP
        dist.broadcast(tensor.detach(), src=0)
    before = list(module.parameters())
    for unit in [*getattr(module, "fsdp_units", []), module]:
        for block in getattr(unit, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(unit, mesh=mesh)
    sharded = {id(old): new for old, new in zip(before, module.parameters())}
    for opt in optimizers:
        for group in opt.param_groups:
            group["params"] = [sharded.get(id(p), p) for p in group["params"]]


def owner(module_by_key: dict, optimizer) -> torch.nn.Module:
    """The one network whose parameters ``optimizer`` updates (a sharded optimizer state needs it)."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    found = [m for m in module_by_key.values() if params & {id(p) for p in m.parameters()}]
    if len(found) != 1:
        raise ValueError(f"with sharding, an optimizer must update exactly one network, not {len(found)}")
    return found[0]


def full_state_dict(module: torch.nn.Module) -> dict:
    """The whole state dict on the main process ({} elsewhere); every process must call it."""
    return get_model_state_dict(module, options=FULL)


def gathered_state_dict(module: torch.nn.Module) -> dict:
    """The whole state dict on every process (all-gathered)."""
    return get_model_state_dict(module, options=FULL_IN)


def parameter_names(module: torch.nn.Module, optimizer) -> list[str]:
    """The names of ``optimizer``'s parameters in its own order (the indices of a plain optimizer state dict)."""
    # the names torch's state dicts use: without activation checkpointing's and compile's wrapper modules
    names = {id(p): name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
             for name, p in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state_dict(module: torch.nn.Module, optimizer) -> dict:
    """The whole optimizer state on the main process, keyed by parameter index as ``optimizer.state_dict()``
    keys it (not by name, as torch's sharded state dicts do), so checkpoints are the same with or without
    sharding and resume on any process count."""
    state = get_optimizer_state_dict(module, optimizer, options=FULL)
    if not state:
        return state
    index = {name: i for i, name in enumerate(parameter_names(module, optimizer))}
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def load_full_state_dict(module: torch.nn.Module, state: dict) -> None:
    set_model_state_dict(module, state, options=FULL_IN)


def load_full_optimizer_state_dict(module: torch.nn.Module, optimizer, state: dict) -> None:
    """The inverse of ``full_optimizer_state_dict``: a plain (index-keyed) state into the sharded optimizer."""
    names = parameter_names(module, optimizer)
    state = {"state": {names[int(i)]: value for i, value in state["state"].items()},
             "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                              for group in state["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, state, options=FULL_IN)
