"""What a training run sets up before its first step: run directory, seeds, device, optimizer,
learning-rate schedule, RNG snapshots for resume, and the errors that end a run early."""
from __future__ import annotations

import fcntl
import json
import math
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch

from captioner.checkpoint import CheckpointError, read_checkpoint
from captioner.config import Config, to_dict
from captioner.data.records import DatasetFormatError
from captioner.devices import available_device
from captioner.files import write_atomically
from captioner.model import Captioner

EXIT_INTERRUPTED = 130  # train.py's exit code after a graceful stop on SIGINT/SIGTERM (last.pt saved)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the current step finished and last.pt was saved."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted: saved {checkpoint}; continue with --resume {checkpoint}")
        self.checkpoint = checkpoint


class NonFiniteLoss(FloatingPointError):
    """The loss, the gradient norm or a weight became NaN or inf; no step is taken with it and no
    checkpoint is written from it. `step` counts optimizer steps from 1 (the step that failed)."""

    def __init__(self, step: int, last_finite: float | None, what: str = "loss") -> None:
        super().__init__(f"{what} is not finite at step {step} (last finite loss: {last_finite}); "
                         "lower train.learning_rate or check the data. Checkpoints on disk are untouched.")
        self.step, self.last_finite = step, last_finite


def resume_target(path: str | Path) -> Path:
    """The checkpoint that --resume names: a file as given, a directory means the last.pt inside it.

    A directory without last.pt is an error (never a silent fresh start); leftover temporary files
    from an interrupted save are named, since they are never complete checkpoints.
    """
    path = Path(path)
    if not path.is_dir():
        return path  # read_checkpoint names a missing file
    if (path / "last.pt").is_file():
        return path / "last.pt"
    temporary = sorted(p.name for p in path.glob(".*.tmp"))
    found = f"only unfinished temporary files ({', '.join(temporary[:3])})" if temporary else "no last.pt"
    raise CheckpointError(f"--resume {path}: a directory must hold last.pt, found {found}; "
                          "name a checkpoint file or start a new run without --resume")


def check_same_model(saved: dict[str, Any], config: Config, path: str | Path) -> None:
    """Resume only into the same model: name the first differing model.* key with both values."""
    saved_model = saved.get("model") if isinstance(saved, dict) else None
    current = to_dict(config)["model"]
    # A key the saving version did not have yet reads as its default, as loading that checkpoint does.
    saved_model = {**to_dict(Config())["model"], **saved_model} if isinstance(saved_model, dict) else {}
    for key in sorted(set(saved_model) | set(current)):
        if saved_model.get(key) != current.get(key):
            raise CheckpointError(f"{path}: model.{key} is {saved_model.get(key)!r} in the checkpoint but "
                                  f"{current.get(key)!r} in this run's config; resume with the checkpoint's model settings")


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


CHECKPOINT_METRICS = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}  # train.checkpoint_metric: its name in the log


def check_checkpoint_metric(metric: str) -> None:
    if metric not in CHECKPOINT_METRICS:
        raise ValueError(f"train.checkpoint_metric={metric!r}: expected one of {', '.join(CHECKPOINT_METRICS)}")


def best_score_on_disk(run_dir: Path, recorded: float, metric: str) -> float:
    """The best validation score (`metric`) to beat after a resume: `recorded` (last.pt's), or best.pt's own
    score when that is higher. A kill between the two saves leaves best.pt one epoch ahead of last.pt; on a
    GPU the repeated epoch need not score the same, and must not replace a better best.pt."""
    best = run_dir / "best.pt"
    if not best.is_file():
        return recorded
    score = read_checkpoint(best).get("metrics", {}).get(metric)
    return max(recorded, score) if isinstance(score, (int, float)) else recorded


def recorded_best_score(progress: dict[str, Any], metric: str) -> float:
    """The best validation `metric` a checkpoint's progress holds, or -1 when it chose by another metric
    (a resume that changes train.checkpoint_metric: best_score_on_disk then reads best.pt's own score).
    Checkpoints written before train.checkpoint_metric existed chose by BLEU-4 and call it best_bleu4."""
    if progress.get("checkpoint_metric", "bleu4") != metric:
        return -1.0
    return progress.get("best_score", progress.get("best_bleu4", -1.0))


def check_splits(splits: dict[str, list], root: str) -> None:
    """Training needs train images, and val images to choose best.pt on: choosing it on the test split
    would report a score the selection has already seen."""
    for split, role in (("train", "to train on"), ("val", "to choose best.pt on (never the test split)")):
        if not splits[split]:
            raise DatasetFormatError(f"data.root={root}: the {split} split is empty; it needs images {role}. "
                                     "Give some images that split, or leave out a folder CSV's split column "
                                     "for a seeded random split")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, threads: int) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return available_device(name, option="train.device=")


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The training forward pass's numeric format (train.precision).

    bf16: autocast runs matmuls and convolutions in bfloat16 and keeps softmax, the loss and other
    reductions in fp32; weights, gradients and optimizer state stay fp32. bfloat16 has fp32's 8-bit
    exponent, so gradients do not underflow: no GradScaler, nothing to unscale, and gradient clipping
    reads the true fp32 gradient norm. fp32: autocast is off (the default, on CPU too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision=bf16: this GPU has no bfloat16 support; use train.precision=fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_optimizer(model: Captioner, config: Config) -> torch.optim.Optimizer:
    """Adam(W) over the trainable parameters: fine-tuned encoder blocks in their own group at
    train.encoder_learning_rate (pretrained weights need small steps), the rest at train.learning_rate."""
    train = config.train
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if train.optimizer not in optimizers:
        raise ValueError(f"train.optimizer={train.optimizer!r}: expected one of {sorted(optimizers)}")
    finetuned = [p for block in model.encoder.trainable_blocks for p in block.parameters()]
    finetuned_ids = {id(p) for p in finetuned}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in finetuned_ids]
    groups = [{"params": rest, "lr": train.learning_rate}]
    if finetuned:
        groups.append({"params": finetuned, "lr": train.encoder_learning_rate})
    return optimizers[train.optimizer](groups, lr=train.learning_rate, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 at the last step (or constant)."""
    train = config.train
    total = train.max_steps or train.epochs * steps_per_epoch
    warmup = min(train.warmup_steps, max(total - 1, 0))
    if train.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"train.lr_schedule={train.lr_schedule!r}: expected cosine or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.lr_schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a save/load round trip may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class StopOnSignal:
    """First SIGINT/SIGTERM: finish the step, save, exit; a second SIGINT: stop at once."""

    def __enter__(self) -> "StopOnSignal":
        self.requested = False
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
