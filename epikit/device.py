"""Choice of the torch device: a GPU when present, else the CPU.

``EPIKIT_DEVICE`` (e.g. ``cpu``, ``cuda:1``, ``mps``) overrides the automatic choice.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def default_device() -> torch.device:
    """The device epikit computes on: ``EPIKIT_DEVICE``, else CUDA if available, else CPU."""
    import torch

    requested = os.environ.get("EPIKIT_DEVICE", "").strip()
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def describe_device(device: torch.device | None = None) -> str:
    """A human-readable name of ``device`` for manifests (e.g. ``cuda: NVIDIA H100``)."""
    import torch

    device = device or default_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def available_memory() -> float:
    """Bytes of free RAM (Linux / macOS); infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return math.inf
