"""How a run ends early: a graceful stop on SIGINT/SIGTERM (last.pt saved) and a loss, gradient or
weight that is not finite. train.py maps them to exit codes."""
from __future__ import annotations

import signal
from pathlib import Path

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
