"""Which device a command may use: a device this machine has, or a one-line refusal.

`torch.load(map_location="cuda")` on a machine without CUDA fails deep inside unpickling, where it
reads like a damaged file; asking first turns it into "CUDA is not available here; use cpu".
"""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine; the message says what does."""


def available_device(name: str | torch.device, option: str = "--device ") -> torch.device:
    """`name` as a torch.device this machine has. `option` is the setting as the user writes it, up to
    the value ("--device ", "train.device="), so that the message quotes what to type instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{option}{name}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{option}{name}: CUDA is not available on this machine; use {option}cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{option}{name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type not in ("cpu", "mps", "meta"):
        raise DeviceError(f"{option}{name}: expected cpu, cuda or cuda:N")
    return device


def resolve_device(name: str, threads: int) -> torch.device:
    """A training run's device (train.device: auto means CUDA when there is one) and its CPU threads."""
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return available_device(name, option="train.device=")

