"""Which device a command may use: a device this machine has, or a one-line refusal.

`torch.load(map_location="cuda")` on a machine without CUDA fails deep inside unpickling, where it
reads like a damaged file; asking first turns it into "CUDA is not available here; use cpu".
"""
from __future__ import annotations

import math
import os
import time

import torch

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # a user's thread setting wins over free_cores


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
    """A training run's device (train.device: auto means CUDA when there is one) and its CPU threads:
    `threads`, or with 0 (the default) on the CPU one per core that is free when the run starts."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else \
        available_device(name, option="train.device=")
    if threads > 0:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and not any(variable in os.environ for variable in THREAD_VARIABLES):
        torch.set_num_threads(free_cores(torch.get_num_threads()))
    return device


def free_cores(most: int, seconds: float = 0.25) -> int:
    """How many cores are free now, from /proc/stat's idle time over `seconds`: between 1 and `most`.

    Measured on the 2-core development machine beside one other CPU-bound process, two torch threads
    made the default training run several times slower than one (docs/performance.md): OpenMP's threads
    wait for each other at every op, and one of them keeps losing its core. A core counts as free when
    at least 70 % of it sat idle. Where /proc/stat cannot be read (not Linux), `most`."""
    try:
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return most
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])  # idle + iowait
    if total <= 0:
        return most
    return max(1, min(most, math.floor(idle / total * (os.cpu_count() or 1) + 0.3)))


def _cpu_times() -> list[int]:
    """The machine's jiffies in each state: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]

