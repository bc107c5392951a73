"""Which device a stage runs on, and how it is named in logs and MLflow tags.

torch is imported where a device is asked for, not at import: the stages name their device in
`--help` and in params errors, which must answer before that slow import."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(choice: str) -> torch.device:
    """``auto`` -> the first visible CUDA GPU, else the CPU; ``cuda`` insists on a GPU."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device: cuda was asked for but no CUDA GPU is visible to PyTorch "
            "(use device: auto or cpu, or run the image with --gpus all)"
        )
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def device_names(device: torch.device) -> list[str]:
    """Names of every device the run can use: all visible GPUs on CUDA, else the CPU."""
    import torch

    if device.type == "cuda":
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"{cpu_name()} ({torch.get_num_threads()} threads)"]


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU model as the kernel reports it (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
