"""Read EDM's network pickles (``network-snapshot-*.pkl``, ``edm-imagenet-64x64-cond-adm.pkl``) safely.

EDM (Karras et al. 2022) pickles its modules with ``torch_utils.persistence``: each module carries
the source code of its defining file, which plain ``pickle.load`` executes. Here a restricted
unpickler maps the persistence hook to a stub that only keeps the recorded state, lets through the
torch tensor rebuild functions and a few plain containers, and refuses every other global (a
``CheckpointError`` naming the file, as for a truncated file). The weights are then read from the
stubs' ``_parameters``, ``_buffers`` and ``_modules``.
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import CheckpointError
from models.edm_unet import EDMPrecond

# EDMPrecond's positional parameters, for snapshots built with positional arguments
_PRECOND_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data",
                 "model_type")


class PersistentStub:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` leaves here: the class name and
    the pickled state; the recorded source is kept as text and never run."""

    def __init__(self, meta: dict):
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src")
        self.state = dict(meta.get("state") or {})


class ModuleStub:
    """A plain torch container (``ModuleDict``, ``ModuleList``, ``Sequential``): its pickled state."""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state)


class EasyDict(dict):
    """Stands in for ``dnnlib.EasyDict`` (a dict with attribute access)."""


def _load_storage(data: bytes):
    """``torch.storage._load_from_bytes`` with ``weights_only=True``: a storage, never code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype: np.dtype, data: bytes) -> Any:
    """``numpy.core.multiarray.scalar`` for numeric dtypes (EDM records np.float64 init weights)."""
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing a numpy object scalar in an EDM pickle")
    return np.frombuffer(data, dtype=dtype)[0].item()


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleStub,
    ("torch.nn.modules.container", "ModuleList"): ModuleStub,
    ("torch.nn.modules.container", "Sequential"): ModuleStub,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: an EDM network pickle needs only torch tensors and "
                "torch_utils.persistence objects; this file is something else (or unsafe)")
        return _ALLOWED[(module, name)]


def _state(obj: Any) -> dict:
    if isinstance(obj, (PersistentStub, ModuleStub)):
        return obj.state
    raise ValueError(f"expected a pickled torch module, found {type(obj).__name__}")


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """state_dict order: this module's parameters, its persistent buffers, then each submodule."""
    state = _state(obj)
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, b in (state.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b.detach()
    for name, m in (state.get("_modules") or {}).items():
        if m is not None:
            _collect(m, f"{prefix}{name}.", out)


def load_edm_pickle(path: str | Path, key: str = "ema") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, init_kwargs) of the network ``key`` in an EDM pickle, without running its code.

    ``init_kwargs`` are the constructor arguments persistence recorded, plus ``class_name``
    (e.g. "EDMPrecond")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EDM network pickle not found: {path}")
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError) as err:  # refused globals, truncated files
        raise CheckpointError(f"{path} cannot be read as an EDM network pickle ({err or 'it ends too early'}); if it "
                              "is one, download it again") from None
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not an EDM network pickle: expected a dict with {key!r}, found {found}")
    net = data[key]
    if not isinstance(net, PersistentStub):
        raise ValueError(f"{path}: {key!r} is not a torch_utils.persistence module ({type(net).__name__})")
    state_dict: dict[str, torch.Tensor] = {}
    _collect(net, "", state_dict)
    args = net.state.get("_init_args") or ()
    init_kwargs = {"class_name": net.class_name, **dict(zip(_PRECOND_ARGS, args)), **(net.state.get("_init_kwargs") or {})}
    return state_dict, init_kwargs


def edm_from_pickle(path: str | Path, key: str = "ema") -> EDMPrecond:
    """Our ``EDMPrecond`` built from a pickle's recorded arguments, weights loaded strictly, in eval mode."""
    state_dict, init_kwargs = load_edm_pickle(path, key)
    kwargs = dict(init_kwargs)
    class_name = kwargs.pop("class_name")
    if class_name != "EDMPrecond":
        raise ValueError(f"{path}: the network is EDM's {class_name}; only EDMPrecond (with DhariwalUNet) is supported")
    model = EDMPrecond(**kwargs)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
