"""Every file is written whole or not at all, follows the umask, and a failed write is one line.

A full disk under torch's real zip writer (it answers RuntimeError "unexpected pos", not OSError), on a
real tmpfs where this machine may mount one, and at the last write of a run (metrics.json); a second
Ctrl-C while a checkpoint is being written; the mode of every file a run writes.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides

import train
from captioner import checkpoint, files
from captioner.checkpoint import save_checkpoint
from captioner.config import load_config
from captioner.data import load_dataset
from captioner.files import WriteError, write_atomically
from captioner.training import trainer as engine

CONFIG = str(REPO / "configs/shapes.yaml")
DISK_BYTES = 32 * 2**20  # the tmpfs: room for the run until the test fills it


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writes") / "data"
    load_dataset(load_config(CONFIG, tiny_overrides(root, root.parent / "unused")).data, log=lambda message: None)
    return root


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file() and path.name != ".lock"}


def assert_one_line_exit_4(code: int, stderr: str, path: Path) -> None:
    last = stderr.strip().splitlines()[-1]
    assert code == 4, stderr[-2000:]
    assert last == f"error: could not write {path} (No space left on device); the file there before is kept"
    assert "Traceback" not in stderr


def after_epoch(monkeypatch, epoch: int, action) -> None:
    """Call action(trainer) right after epoch `epoch` (from 1) has been validated and saved."""
    original = engine.Trainer.end_epoch

    def end_epoch(self):
        original(self)
        if self.progress.epoch == epoch:
            action(self)

    monkeypatch.setattr(engine.Trainer, "end_epoch", end_epoch)


# --- a full disk under torch's own writer: exit 4, one line, the previous checkpoint byte-identical ----------

class FailingHandle:
    """The file torch.save writes into, which fails once `room` bytes are in it: by default as a full disk
    does. (A failure at the very first write reaches torch.save's caller as it is; a later one, as on a
    real disk, comes out of torch's zip writer as RuntimeError "unexpected pos".)"""

    def __init__(self, handle, room: int = 4096, failure: BaseException | None = None) -> None:
        self.handle, self.room = handle, room
        self.failure = failure or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data) -> int:
        if len(data) > self.room:
            raise self.failure
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def test_full_disk_keeps_the_previous_checkpoint_and_exits_4(data_root, tmp_path, monkeypatch, capsys):
    run_dir, saved, real_save = tmp_path / "run", {}, torch.save

    def save(payload, handle, *args, **kwargs):  # torch's real zip writer, into a file on a full disk
        return real_save(payload, FailingHandle(handle) if saved else handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    after_epoch(monkeypatch, 1, lambda trainer: saved.update(run_files(run_dir)))
    code = train.main(["--config", CONFIG, *tiny_overrides(data_root, run_dir)])
    stderr = capsys.readouterr().err
    failed = "best.pt" if "best.pt (No space" in stderr else "last.pt"
    assert_one_line_exit_4(code, stderr, run_dir / failed)
    assert (run_dir / "last.pt").read_bytes() == saved["last.pt"]
    assert (run_dir / "best.pt").read_bytes() == saved["best.pt"]
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "ctrl_c"])
def test_torch_writer_failure_is_raised_as_its_cause(tmp_path, monkeypatch, failure):
    """torch.save's RuntimeError ("unexpected pos") becomes the OSError or KeyboardInterrupt behind it."""
    payload, real_save = {"model": {"w": torch.zeros(10_000)}, "config": {}}, torch.save
    with pytest.raises(RuntimeError, match="unexpected pos"):  # what torch itself raises
        real_save(payload, FailingHandle(io.BytesIO(), 4096, failure))
    monkeypatch.setattr(checkpoint.torch, "save",
                        lambda data, handle: real_save(data, FailingHandle(handle, 4096, failure)))
    with pytest.raises(type(failure)):
        save_checkpoint(payload, tmp_path / "last.pt")
    assert not list(tmp_path.iterdir())


# --- a real full disk: a small tmpfs, filled in the middle of a run --------------------------------------------

@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 32 MB tmpfs (skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Write into disk/filler until the disk is full, then free `leave` bytes."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 2**16)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        os.truncate(handle.fileno(), max(0, os.fstat(handle.fileno()).st_size - leave))


@pytest.mark.parametrize("moment", ["checkpoint", "metrics"])
def test_a_real_full_disk_keeps_every_file_whole_and_exits_4(data_root, small_disk, monkeypatch, capsys, moment):
    """Full after epoch 1 (room for a history line, not for a checkpoint), or just before metrics.json."""
    run_dir, saved = small_disk / "run", {}
    if moment == "checkpoint":
        after_epoch(monkeypatch, 1, lambda trainer: (saved.update(run_files(run_dir)), fill(small_disk, 2**14)))
    else:
        original = engine.Trainer.test
        monkeypatch.setattr(engine.Trainer, "test", lambda self: (fill(small_disk, 0), original(self))[1])
    code = train.main(["--config", CONFIG, *tiny_overrides(data_root, run_dir)])
    stderr = capsys.readouterr().err
    if moment == "checkpoint":
        failed = "best.pt" if "best.pt (No space" in stderr else "last.pt"
        assert_one_line_exit_4(code, stderr, run_dir / failed)
        assert {name: run_files(run_dir)[name] for name in ("last.pt", "best.pt")} == {
            name: saved[name] for name in ("last.pt", "best.pt")}
    else:
        assert_one_line_exit_4(code, stderr, run_dir / "metrics.json")
        assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".*.tmp"))
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # whole lines only


def test_metrics_json_that_cannot_be_written_exits_4_and_leaves_no_partial_file(data_root, tmp_path, monkeypatch,
                                                                                capsys):
    """The last write of a run (metrics.json) fails at fsync, as a full disk may report it."""
    run_dir, real_fsync = tmp_path / "run", os.fsync

    def fsync(descriptor: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")).startswith(".metrics.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(files.os, "fsync", fsync)
    code = train.main(["--config", CONFIG, *tiny_overrides(data_root, run_dir)])
    assert_one_line_exit_4(code, capsys.readouterr().err, run_dir / "metrics.json")
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob(".*.tmp"))


# --- a second Ctrl-C while a checkpoint is being written ------------------------------------------------------

# train.py whose steps and checkpoint writes are slow, announcing both. The writes go through torch's real
# zip writer, so the second SIGINT lands inside torch.save, as it would while a large checkpoint is written.
SLOW_SAVES = """
import sys, time
import torch
from captioner import checkpoint
from captioner.training import trainer as engine

class SlowHandle:
    def __init__(self, handle):
        self.handle, self.writes = handle, 0
    def write(self, data):
        self.writes += 1
        if self.writes == 3:  # torch's zip writer has begun: an interrupt now meets it half-way
            print("saving", flush=True)
        for _ in range(5):
            time.sleep(0.01)
        return self.handle.write(data)
    def flush(self):
        self.handle.flush()

real_save, real_step = torch.save, engine.Trainer.train_step
def slow_save(payload, handle):
    return real_save(payload, SlowHandle(handle))
def slow_step(self, *batch):
    print(f"starting step {self.progress.step + 1}", flush=True)
    time.sleep(0.5)
    return real_step(self, *batch)
checkpoint.torch.save, engine.Trainer.train_step = slow_save, slow_step
import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.timeout(120)
def test_second_sigint_during_a_save_exits_130_in_one_line(data_root, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-u", "-c", SLOW_SAVES, "--config", CONFIG, *tiny_overrides(data_root, run_dir)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for wanted in ("starting step 2", "saving"):
        for line in process.stdout:
            if line.strip() == wanted:
                break
        process.send_signal(signal.SIGINT)  # first: finish the step, then save; second: stop now
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "stopped at once by an interrupt; checkpoints on disk are as last saved"
    assert "Traceback" not in stderr
    assert not (run_dir / "last.pt").exists() and not list(run_dir.glob(".*.tmp"))


# --- files follow the umask ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "text.json", "{}")
        save_checkpoint({"model": {}, "config": {}}, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    for name in ("text.json", "last.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_every_file_of_a_run_has_the_umask_mode(tiny_run):
    umask = os.umask(0)
    os.umask(umask)  # read it back: the tiny run was started by this process, with this umask
    modes = {path.name: path.stat().st_mode & 0o777 for path in tiny_run.iterdir() if path.is_file()}
    assert {"best.pt", "last.pt", "history.jsonl", "config.yaml", "metrics.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def fail(handle) -> None:
        handle.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as error:
        write_atomically(target, fail)
    assert str(error.value) == f"could not write {target} (No space left on device); the file there before is kept"
    assert target.read_text() == "old" and [path.name for path in tmp_path.iterdir()] == ["metrics.json"]
