"""Host-to-device copies that never make the host wait for the device.

A step's small inputs (indices, sampling columns) are built on the host while the device may
still be running the previous step; a plain `.to("cuda")` from pageable memory waits for it.
Through pinned memory and `non_blocking`, the copy is queued behind that work instead.
"""

from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` (a CPU tensor) on `device`, queued on CUDA without a host-side wait."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
