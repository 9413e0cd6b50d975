"""train.threads=0 runs one torch thread per core that is free when the run starts (devices.free_cores)."""
from __future__ import annotations

import itertools

import pytest
import torch

from captioner import devices


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _readings(monkeypatch, busy_share: float, cores: int = 2):
    """/proc/stat as it reads when `busy_share` of the machine's time went to other processes."""
    monkeypatch.setattr(devices.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(devices.time, "sleep", lambda seconds: None)
    ticks = itertools.count()

    def cpu_times():
        elapsed = 100 * cores * next(ticks)
        busy = round(elapsed * busy_share)
        return [busy, 0, 0, elapsed - busy, 0, 0, 0, 0]
    monkeypatch.setattr(devices, "_cpu_times", cpu_times)


@pytest.mark.parametrize("busy_share, expected", [(0.0, 2), (0.1, 2), (0.5, 1), (1.0, 1)])
def test_free_cores_counts_the_idle_ones(monkeypatch, busy_share, expected):
    _readings(monkeypatch, busy_share)
    assert devices.free_cores(2) == expected


def test_free_cores_without_proc_stat_keeps_torchs_count(monkeypatch):
    def unreadable():
        raise OSError("no /proc here")
    monkeypatch.setattr(devices, "_cpu_times", unreadable)
    assert devices.free_cores(4) == 4


def test_resolve_device_threads(monkeypatch):
    _readings(monkeypatch, busy_share=0.5)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    devices.resolve_device("cpu", 0)
    assert torch.get_num_threads() == 1, "one core busy elsewhere: one thread"
    devices.resolve_device("cpu", 2)
    assert torch.get_num_threads() == 2, "train.threads wins"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    devices.resolve_device("cpu", 0)
    assert torch.get_num_threads() == 2, "so does the user's OMP_NUM_THREADS"


def test_a_resume_takes_the_threads_of_the_run_it_continues(tmp_path, monkeypatch):
    """train.threads=0 on resume: the saved run's count, whatever is free now, so that the resumed run
    is still the uninterrupted one bit for bit (thread counts can change a sum's rounding)."""
    from conftest import REPO, tiny_overrides

    from captioner.config import load_config
    from captioner.training.trainer import Trainer

    overrides = tiny_overrides(tmp_path / "data", tmp_path / "run") + ["train.epochs=1"]
    Trainer(load_config(REPO / "configs" / "shapes.yaml", overrides), log=lambda line: None).fit()
    monkeypatch.setattr(devices, "free_cores", lambda most, seconds=0.25: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    resumed = load_config(REPO / "configs" / "shapes.yaml", overrides + ["train.threads=0", "train.epochs=2"])
    trainer = Trainer(resumed, resume=tmp_path / "run" / "last.pt", log=lambda line: None)
    assert torch.get_num_threads() == 1 and trainer.progress.threads == 1
