"""What every benchmark shares: the machine record, alternating timed repetitions, Markdown tables, JSON.

Timing on a shared, noisy machine: the variants being compared run in turns inside each repetition (A B C,
B C A, C A B, ...), never A A A then B B B, so a burst of load from elsewhere hits them all alike; each
variant reports the minimum (the best the code can do) and the median (what a user sees) of its samples,
and every ratio is taken between two variants measured in the same run.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch


class BenchmarkError(RuntimeError):
    """A benchmark could not measure (e.g. the job it times failed): run.py prints the one line and exits 1."""


@dataclass
class Settings:
    """Options every benchmark reads (set by benchmarks/run.py)."""

    output: Path  # JSON files go here
    repeats: int = 7  # timed samples per variant (alternating); the minimum and median are reported
    threads: int = 2  # torch CPU threads for CPU numbers
    quick: bool = False  # tiny shapes and 2 repeats: checks that everything runs (tests use it)
    devices: tuple[str, ...] = ("cpu",)  # "cuda" is added when available (see run.py)
    extra: dict = field(default_factory=dict)  # per-benchmark switches (e.g. plot=True)


def machine() -> dict:
    """CPU model, cores, load, versions and threads: enough to know where a number came from."""
    info = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "onednn": torch.backends.mkldnn.is_available(), "load_average_1min": _load_average(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
            device: str = "cpu", self_timed: bool = False) -> dict[str, dict[str, float]]:
    """Seconds per call of each variant: {"min", "median", "cpu_min", "samples"}, taken in alternating turns.

    cpu_min is process CPU time (all threads): on an overloaded machine it is steadier than wall time.
    self_timed=True: each call returns its own duration in seconds (to leave set-up out of the sample)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
        synchronize(device)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]  # rotate who goes first
        for name in order:
            synchronize(device)
            started, started_cpu = time.perf_counter(), time.process_time()
            returned = variants[name]()
            synchronize(device)
            wall[name].append(float(returned) if self_timed else time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {name: {"min": min(wall[name]), "median": statistics.median(wall[name]), "cpu_min": min(cpu[name]),
                   "samples": [round(value, 6) for value in wall[name]]} for name in names}


def ratio(timings: dict[str, dict[str, float]], name: str, reference: str) -> dict[str, float]:
    """name's time over reference's (> 1 = slower than the reference): wall-clock minimum and median, and
    minimum CPU time (with OMP_WAIT_POLICY=PASSIVE idle threads sleep, so this counts work done)."""
    ours, theirs = timings[name], timings[reference]
    return {"min": round(ours["min"] / theirs["min"], 3), "median": round(ours["median"] / theirs["median"], 3),
            "cpu": round(ours["cpu_min"] / theirs["cpu_min"], 3)}


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with a bold title line; numbers are printed as given."""
    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def write_result(settings: Settings, name: str, payload: dict) -> Path:
    """Write <output>/<name>.json with the machine record added; return the path."""
    settings.output.mkdir(parents=True, exist_ok=True)
    path = settings.output / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "quick": settings.quick, **payload,
               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    path.write_text(json.dumps(payload, indent=2))
    return path
