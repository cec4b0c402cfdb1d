"""Throughput and model FLOPs utilisation (MFU).

Training FLOPs per image are counted once with ``torch.utils.flop_counter`` on a
single forward pass (matmuls, convolutions and attention), times three for the
backward pass. MFU divides achieved FLOP/s by the peak of the device actually in
use (dense tensor-core figures, no sparsity); on devices without a known peak
(CPUs, unlisted GPUs) MFU is reported as None rather than guessed.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peaks in FLOP/s: (bf16/fp16 tensor, tf32 tensor, fp32 non-tensor).
_PEAKS = {
    "H100 SXM": (989.4e12, 494.7e12, 66.9e12),
    "H100 NVL": (835.0e12, 417.5e12, 60.0e12),
    "H100 PCIe": (756.0e12, 378.0e12, 51.0e12),
    "H100": (989.4e12, 494.7e12, 66.9e12),
    "H200": (989.4e12, 494.7e12, 66.9e12),
    "H800": (989.4e12, 494.7e12, 66.9e12),
    "A100": (312.0e12, 156.0e12, 19.5e12),
    "A10G": (125.0e12, 62.5e12, 31.2e12),
    "L40S": (362.0e12, 183.0e12, 91.6e12),
    "RTX 4090": (165.2e12, 82.6e12, 82.6e12),
    "V100": (125.0e12, 15.7e12, 15.7e12),
}


def peak_flops(device: torch.device, precision: str = "no") -> float | None:
    """Peak FLOP/s of ``device`` for a precision: "bf16"/"fp16", "tf32" or "no" (fp32, TF32 if enabled)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in _PEAKS.items():  # most specific keys first
        if key in name:
            if precision in ("bf16", "fp16"):
                return half
            tf32_on = torch.backends.cuda.matmul.allow_tf32 or precision == "tf32"
            return tf32 if tf32_on else fp32
    return None


@torch.no_grad()
def forward_flops(model: torch.nn.Module, *inputs, **kwargs) -> int:
    """FLOPs of one forward call (a multiply-add counts as two)."""
    with FlopCounterMode(display=False) as counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops()


def train_flops_per_sample(model: torch.nn.Module, *inputs, **kwargs) -> float:
    """Forward + backward FLOPs per sample: 3x the forward of a batch, divided by its size."""
    return 3.0 * forward_flops(model, *inputs, **kwargs) / inputs[0].shape[0]


def mfu(samples_per_sec: float, flops_per_sample: float, peak: float | None, world_size: int = 1) -> float | None:
    if peak is None:
        return None
    return samples_per_sec * flops_per_sample / (peak * world_size)
