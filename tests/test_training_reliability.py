"""Reliability of a training run under faults.

Non-finite loss, gradients and weights; SIGINT/SIGTERM in a real subprocess; resume that reproduces an
uninterrupted run bit for bit; a corrupted image met by a DataLoader worker. Runs train.py's `main`
in-process where it can (fast), and a subprocess for signals. Bad resume targets, an unwritable run
directory and a full disk are in test_checkpoint_reliability.py.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides

import train
from captioner.config import load_config
from captioner.data import load_dataset
from captioner.training import inputs as training_inputs
from captioner.training import trainer as training_loop
from captioner.training.stops import EXIT_INTERRUPTED, NonFiniteLoss, TrainingInterrupted

CONFIG = str(REPO / "configs/shapes.yaml")
STEPS_PER_EPOCH = 4  # tiny_overrides: 64 training images, batches of 16
DROPOUT = ["model.dropout=0.3"]  # dropout draws from the RNG, so resume must restore it


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny shapes dataset, generated once for this module."""
    root = tmp_path_factory.mktemp("reliability") / "data"
    load_dataset(tiny_config(root, root.parent / "unused").data, log=lambda message: None)
    return root


def tiny_config(data_root: Path, run_dir: Path, *extra: str):
    return load_config(CONFIG, [*tiny_overrides(data_root, run_dir), *DROPOUT, *extra])


def train_main(data_root: Path, run_dir: Path, *extra: str) -> int:
    return train.main(["--config", CONFIG, *tiny_overrides(data_root, run_dir), *DROPOUT, *extra])


def after_each_step(monkeypatch, hook) -> list[float]:
    """Call hook(trainer) after every optimizer step; return the list that collects the per-step losses."""
    losses: list[float] = []
    original = training_loop.Trainer.train_step

    def recorded_step(self, *batch):
        losses.append(original(self, *batch))
        hook(self)
        return losses[-1]

    monkeypatch.setattr(training_loop.Trainer, "train_step", recorded_step)
    return losses


def before_each_step(monkeypatch, hook) -> None:
    """Call hook(trainer) before every optimizer step (progress.step is the number done so far)."""
    original = training_loop.Trainer.train_step

    def hooked_step(self, *batch):
        hook(self)
        return original(self, *batch)

    monkeypatch.setattr(training_loop.Trainer, "train_step", hooked_step)


def weights_are_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def leftover_temporary_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.tmp"))


# --- case 4: a non-finite loss, gradient or weight stops the run; nothing non-finite is saved ----------------

def test_huge_learning_rate_exits_3_naming_the_step_and_the_last_finite_loss(data_root, tmp_path, monkeypatch, capsys):
    losses = after_each_step(monkeypatch, lambda trainer: None)
    code = train_main(data_root, tmp_path / "run", "train.learning_rate=1.0e+30", "train.lr_schedule=constant",
                      "train.warmup_steps=0")
    message = capsys.readouterr().err
    assert code == 3, message
    assert len(losses) == 1  # the first step is finite; the 1e30 update makes the second loss NaN
    assert f"loss is not finite at step 2 (last finite loss: {losses[0]})" in message
    assert not list((tmp_path / "run").glob("*.pt"))


def test_nan_loss_after_a_saved_epoch_leaves_both_checkpoints_byte_identical(data_root, tmp_path, monkeypatch, capsys):
    run_dir, saved = tmp_path / "run", {}

    def poison_step_six(trainer) -> None:
        if trainer.progress.step == STEPS_PER_EPOCH + 1:  # second epoch, after last.pt and best.pt were saved
            saved.update({name: (run_dir / name).read_bytes() for name in ("last.pt", "best.pt")})
            forward = trainer.model.forward
            monkeypatch.setattr(trainer.model, "forward", lambda *a, **k: (forward(*a, **k)[0], torch.tensor(float("nan"))))

    before_each_step(monkeypatch, poison_step_six)
    code = train_main(data_root, run_dir)
    message = capsys.readouterr().err
    assert code == 3, message
    assert f"loss is not finite at step {STEPS_PER_EPOCH + 2}" in message and "last finite loss: " in message
    assert saved and all((run_dir / name).read_bytes() == content for name, content in saved.items())
    assert weights_are_finite(run_dir / "best.pt") and not leftover_temporary_files(run_dir)


def test_non_finite_gradient_is_caught_before_the_optimizer_step(data_root, tmp_path, monkeypatch):
    trainer = training_loop.Trainer(tiny_config(data_root, tmp_path / "run"), log=lambda message: None)
    before: dict[str, torch.Tensor] = {}

    def overflow_in_backward(trainer) -> None:
        if trainer.progress.step == 2:  # the loss stays finite; only the gradient overflows
            before.update({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
            next(trainer.model.parameters()).register_hook(lambda gradient: gradient * float("inf"))

    before_each_step(monkeypatch, overflow_in_backward)
    with pytest.raises(NonFiniteLoss, match="gradient norm is not finite at step 3"):
        trainer.fit()
    after = dict(trainer.model.named_parameters())
    assert before and all(torch.equal(before[name], after[name]) for name in before)  # no update was applied


def test_non_finite_weights_are_never_written_as_last_or_best(data_root, tmp_path, monkeypatch):
    trainer = training_loop.Trainer(tiny_config(data_root, tmp_path / "run"), log=lambda message: None)

    def blow_up_last_update(trainer) -> None:  # as if the epoch's last update overflowed
        if trainer.progress.step == STEPS_PER_EPOCH:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("inf"))

    after_each_step(monkeypatch, blow_up_last_update)
    with pytest.raises(NonFiniteLoss, match=rf"weight \S+ \(so (best|last).pt was not written\) is not finite at step {STEPS_PER_EPOCH}"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


# --- case 7: k steps, stop, resume == N steps straight ------------------------------------------------------

def stop_after(monkeypatch, steps: int | None) -> list[float]:
    """Record per-step losses; after `steps` steps raise a real SIGINT at the trainer (None: never)."""

    def maybe_interrupt(trainer) -> None:
        if trainer.progress.step == steps:
            assert isinstance(getattr(signal.getsignal(signal.SIGINT), "__self__", None), training_loop.StopOnSignal)
            signal.raise_signal(signal.SIGINT)

    return after_each_step(monkeypatch, maybe_interrupt)


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory) -> tuple[list[float], Path]:
    """Two epochs without a stop: per-step losses and the run directory."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        losses = stop_after(monkeypatch, None)
        training_loop.Trainer(tiny_config(data_root, run_dir), log=lambda message: None).fit()
    return losses, run_dir


@pytest.mark.parametrize("stop_step", [3, STEPS_PER_EPOCH + 2], ids=["mid_first_epoch", "mid_second_epoch"])
def test_resume_reproduces_the_uninterrupted_run_exactly(data_root, straight_run, tmp_path, monkeypatch, stop_step):
    straight_losses, straight_dir = straight_run
    run_dir, log = tmp_path / "run", []
    losses = stop_after(monkeypatch, stop_step)
    with pytest.raises(TrainingInterrupted):
        training_loop.Trainer(tiny_config(data_root, run_dir), log=log.append).fit()
    progress = torch.load(run_dir / "last.pt", weights_only=True)["progress"]
    assert (progress["step"], progress["batch"]) == (stop_step, stop_step % STEPS_PER_EPOCH)  # mid-epoch
    training_loop.Trainer(tiny_config(data_root, run_dir), resume=run_dir / "last.pt", log=log.append).fit()
    assert any(f"at epoch {stop_step // STEPS_PER_EPOCH}, batch {stop_step % STEPS_PER_EPOCH}" in line for line in log)
    assert len(losses) == len(straight_losses) == 2 * STEPS_PER_EPOCH
    assert losses == straight_losses  # bitwise: RNG (dropout), optimizer, scheduler and data order restored
    resumed, straight = (torch.load(d / "last.pt", weights_only=True) for d in (run_dir, straight_dir))
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"] == 2 * STEPS_PER_EPOCH
    without_time = [{k: v for k, v in entry.items() if k != "epoch_seconds"} for entry in resumed["history"]]
    assert without_time == [{k: v for k, v in entry.items() if k != "epoch_seconds"} for entry in straight["history"]]


def test_resume_inside_the_self_critical_epochs_reproduces_the_uninterrupted_run(data_root, tmp_path, monkeypatch):
    # one cross-entropy epoch, then one self-critical epoch; stopped at its 2nd step and resumed
    extra = ("train.epochs=1", "train.self_critical_epochs=1")
    with pytest.MonkeyPatch.context() as straight_patch:
        straight_losses = stop_after(straight_patch, None)
        training_loop.Trainer(tiny_config(data_root, tmp_path / "straight", *extra), log=lambda message: None).fit()
    run_dir, log = tmp_path / "run", []
    losses = stop_after(monkeypatch, STEPS_PER_EPOCH + 2)
    with pytest.raises(TrainingInterrupted):
        training_loop.Trainer(tiny_config(data_root, run_dir, *extra), log=log.append).fit()
    training_loop.Trainer(tiny_config(data_root, run_dir, *extra), resume=run_dir / "last.pt", log=log.append).fit()
    assert len(losses) == 2 * STEPS_PER_EPOCH and losses == straight_losses  # the same samples, the same steps
    assert sum("self-critical training from best.pt" in line for line in log) == 1  # not reloaded mid-epoch
    resumed, straight = (torch.load(d / "last.pt", weights_only=True) for d in (run_dir, tmp_path / "straight"))
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert [entry.get("train_reward") for entry in resumed["history"]] == [
        entry.get("train_reward") for entry in straight["history"]]


def test_signal_during_validation_stops_right_after_the_epoch_is_saved(data_root, tmp_path, monkeypatch):
    real_evaluate = training_loop.evaluate

    def interrupted_evaluate(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # the handler only sets a flag; validation goes on
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training_loop, "evaluate", interrupted_evaluate)
    with pytest.raises(TrainingInterrupted):
        training_loop.Trainer(tiny_config(data_root, tmp_path / "run"), log=lambda message: None).fit()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["progress"]["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()  # stopped before the second epoch and the test


# --- case 6: SIGINT/SIGTERM in a real process ---------------------------------------------------------------

# train.py with slow steps that print when they start. A step is many short calls, like a real step made of
# many torch ops: a signal's Python handler runs between them (one long sleep would delay it to the end).
SLOW_STEPS = """
import sys, time
from captioner.training import trainer as training_loop
original = training_loop.Trainer.train_step
def slow_step(self, *batch):
    print(f"starting step {self.progress.step + 1}", flush=True)
    deadline = time.perf_counter() + float(sys.argv[1])
    while time.perf_counter() < deadline:
        time.sleep(0.01)
    return original(self, *batch)
training_loop.Trainer.train_step = slow_step
import train
sys.exit(train.main(sys.argv[2:]))
"""


def start_slow_training(data_root: Path, run_dir: Path, seconds_per_step: float) -> subprocess.Popen:
    command = [sys.executable, "-u", "-c", SLOW_STEPS, str(seconds_per_step), "--config", CONFIG,
               *tiny_overrides(data_root, run_dir), *DROPOUT]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, wanted: str) -> None:
    for line in process.stdout:
        if line.strip() == wanted:
            return
    pytest.fail(f"training ended before printing {wanted!r}: {process.stderr.read()[-2000:]}")


@pytest.mark.timeout(120)
def test_sigterm_mid_epoch_finishes_the_step_saves_atomically_and_exits_130(data_root, tmp_path):
    run_dir = tmp_path / "run"
    process = start_slow_training(data_root, run_dir, seconds_per_step=0.5)
    wait_for_line(process, "starting step 3")
    process.send_signal(signal.SIGTERM)  # arrives while step 3 is running
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED == 130, stderr[-2000:]
    assert f"interrupted: saved {run_dir / 'last.pt'}; continue with --resume" in stderr
    progress = torch.load(run_dir / "last.pt", weights_only=True)["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"]) == (0, 3, 3)  # step 3 finished, no step 4
    assert not leftover_temporary_files(run_dir) and not (run_dir / "best.pt").exists()


@pytest.mark.timeout(120)
def test_second_sigint_exits_at_once_without_saving(data_root, tmp_path):
    run_dir, seconds_per_step = tmp_path / "run", 5.0
    process = start_slow_training(data_root, run_dir, seconds_per_step)
    wait_for_line(process, "starting step 2")
    process.send_signal(signal.SIGINT)  # first: finish the step, then save
    time.sleep(0.3)
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)  # second: stop now
    stderr = ""
    for line in process.stderr:  # timed up to train.main's message: interpreter teardown is not the run's
        stderr += line
        if "stopped at once by an interrupt" in line:
            break
    assert time.perf_counter() - sent < seconds_per_step / 2, stderr[-2000:]  # did not finish the step
    stderr += process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (run_dir / "last.pt").exists() and not leftover_temporary_files(run_dir)


# --- case 10: an exception inside a DataLoader worker -------------------------------------------------------

@pytest.mark.timeout(120)
def test_corrupted_image_in_a_worker_names_sample_and_file_without_hanging(data_root, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)  # this test damages an image after the dataset check
    monkeypatch.setattr(training_inputs, "BANK_BUDGET_BYTES", 0)  # no in-memory bank: workers decode the files
    damaged = {}
    original = training_loop.Trainer.training_data

    def damage_one_image(self):
        record = self.splits["train"][5]
        Path(record.path).write_bytes(b"\xff\xd8\xff\xe0 garbage, no longer a JPEG")
        damaged["path"] = record.path
        return original(self)

    monkeypatch.setattr(training_loop.Trainer, "training_data", damage_one_image)
    started = time.perf_counter()
    code = train_main(root, tmp_path / "run", "train.num_workers=2")
    message = capsys.readouterr().err
    assert time.perf_counter() - started < 60
    assert code == 2, message
    errors = [line for line in message.splitlines() if line.startswith("error:")]  # the rest is the progress bar
    assert len(errors) == 1 and "Traceback" not in message, message
    assert "training sample 5 " in errors[0] and f"file {damaged['path']}" in errors[0]

