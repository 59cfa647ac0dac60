"""Process-level helpers shared by training, inference and benchmarks: device, seeding, machine name."""

from __future__ import annotations

import platform
import random

import numpy as np
import torch


def select_device(requested: str | None = None) -> torch.device:
    """CUDA when present, else CPU; `requested` ("cpu", "cuda", "cuda:1") overrides.

    Raises:
        ValueError: CUDA was requested but is not available.
    """
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available; use 'cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_name() -> str:
    """The CPU's model name (for benchmark tables), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA only: on CPU it is slower than float32 for these convolutions."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
