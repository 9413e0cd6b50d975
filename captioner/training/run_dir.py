"""The run directory: proved writable before any work, refused when it holds another run, and locked
(run_dir/.lock) for as long as this run trains there."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from captioner.files import write_atomically


def prepare_run_dir(run_dir: Path) -> Path:
    """Create the run directory and prove it is writable before any work starts."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"run_dir={run_dir}: not writable ({error.strerror or error})") from None
    return run_dir


RUN_CHECKPOINTS = ("last.pt", "best.pt")  # a run_dir holding either of these holds a run
LOCK_NAME = ".lock"  # run_dir/.lock: flock'ed by the run that writes there, holds its pid


class RunDirTaken(ValueError):
    """The run_dir holds another run, or another process is training into it (train.py exits 2)."""


def check_run_dir_is_free(run_dir: Path, resume: Path | None, force: bool) -> None:
    """Refuse a run_dir that already holds a run, unless this run resumes a checkpoint from it or --force."""
    found = [name for name in RUN_CHECKPOINTS if (run_dir / name).exists()]
    resuming_here = resume is not None and resume.resolve().parent == run_dir.resolve()
    if found and not (force or resuming_here):
        raise RunDirTaken(f"run_dir={run_dir} already holds a run ({', '.join(found)}); continue it with "
                          f"--resume {run_dir}, start it over with --force, or set another run_dir=...")


class RunDirLock:
    """An exclusive flock on run_dir/.lock for as long as this run trains. The kernel drops it when the
    process ends, kill -9 included, so a crashed run never leaves the directory locked."""

    def __init__(self, run_dir: Path) -> None:
        self.handle = open(run_dir / LOCK_NAME, "a+")  # closed (and so unlocked) by release() or garbage collection
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "?"
            self.handle.close()
            raise RunDirTaken(f"run_dir={run_dir} is in use by another training run (pid {holder}); "
                              "wait for it to end, or set another run_dir=...") from None
        self.handle.truncate(0)
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        self.handle.close()


def claim_run_dir(run_dir: Path, resume: Path | None, force: bool, history: list[dict[str, Any]]) -> RunDirLock:
    """Lock run_dir, check again that it is free (another run may have finished meanwhile), then make its
    files this run's: --force removes the previous checkpoints, metrics.json goes, and history.jsonl is
    rewritten from the checkpoint's history (a resume after a kill never repeats an epoch's line)."""
    lock = RunDirLock(run_dir)
    try:
        check_run_dir_is_free(run_dir, resume, force)
        for name in (*RUN_CHECKPOINTS, "metrics.json") if force else ("metrics.json",):
            (run_dir / name).unlink(missing_ok=True)
        for leftover in run_dir.glob(".*.pt.*.tmp"):  # a save cut short by kill -9; nobody else writes here now
            leftover.unlink(missing_ok=True)
        write_history(run_dir, history)
    except BaseException:
        lock.release()
        raise
    return lock


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """run_dir/history.jsonl, one JSON line per epoch, rewritten whole and atomically after each epoch (an
    append cut short by a full disk or a kill would leave a partial last line)."""
    write_atomically(run_dir / "history.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))

