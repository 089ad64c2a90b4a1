"""One form for every device that enters the package: CUDA with an explicit index.

A tensor on the first GPU reports ``cuda:0``, while ``torch.device("cuda")`` has no index and
``torch.device("cuda") != torch.device("cuda", 0)``; likewise ``cpu:0`` is not ``cpu``. Devices are
normalised once where they enter (``canonical_device``), so every later ``tensor.device == device``
comparison is exact.
"""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["canonical_device", "warp_device", "check_device", "silence_warp"]

DeviceLike = Union[str, torch.device, None]


def canonical_device(device: DeviceLike = None, allow_meta: bool = False) -> torch.device:
    """The device tensors on ``device`` report: ``cpu``, or ``cuda:<index>``.

    Args:
      device: "cpu", "cuda", "cuda:N", a ``torch.device``, or None (CUDA when available, else CPU).
        "cuda" without an index means torch's current CUDA device (as ``torch.zeros(..., device="cuda")``).
      allow_meta: also accept "meta" (shapes only; for code that can run without data, such as counting
        the operators of an update: ``ezm_gpu.opcount``).

    Raises:
      ValueError: not a device string, a type other than cpu/cuda, CUDA without a CUDA device, or an
        index past the devices present.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} ({error})") from None
    if parsed.type == "cpu" or (allow_meta and parsed.type == "meta"):
        return torch.device(parsed.type)  # CPU and meta tensors carry no index
    if parsed.type != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but no CUDA device is available")
    index = torch.cuda.current_device() if parsed.index is None else parsed.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {str(device)!r}: there are {count} CUDA device(s), indices 0..{count - 1}")
    return torch.device("cuda", index)


def warp_device(device: torch.device) -> str:
    """Warp's name for a canonical torch device: "cpu" or "cuda:N"."""
    return "cpu" if device.type == "cpu" else f"cuda:{device.index}"


def check_device(tensor: torch.Tensor, device: torch.device, name: str, owner: str) -> None:
    """Raises ValueError when ``tensor`` is not on ``device`` (canonical), naming both."""
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, the {owner} on {device}")


def silence_warp() -> None:
    """No Warp banner or per-module "load on device ... took ... ms" lines (Warp 1.19 prints those at log
    level INFO whatever ``config.quiet`` says); warnings and errors still print."""
    import warp as wp

    wp.config.quiet = True
    wp.config.log_level = wp.LOG_WARNING
