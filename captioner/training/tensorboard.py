"""Optional TensorBoard logging of a training run (`train.tensorboard: true`; `pip install -e ".[tensorboard]"`).

Written to <run_dir>/tensorboard, read with `tensorboard --logdir runs`:

    train/loss, train/learning_rate       every train.log_every steps (x: optimizer step)
    train/reward                          the self-critical epochs' mean reward per step logged
    val/<metric>                          after every epoch: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, content accuracy
    val/examples                          a few validation captions as text, per epoch

Off by default; with it on and the package missing, the run is refused before any work (exit 2).
Only rank 0 writes under torchrun.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from captioner.config import ConfigError

FOLDER = "tensorboard"  # inside the run directory
SCALARS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "content_accuracy")
EXAMPLES = 4  # validation captions shown per epoch


class TensorBoardLog:
    """A SummaryWriter on <run_dir>/tensorboard with the few calls the trainer makes."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # checked by require_tensorboard first

        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))

    def step(self, step: int, loss: float, learning_rate: float, reward: float | None = None) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/learning_rate", learning_rate, step)
        if reward is not None:
            self.writer.add_scalar("train/reward", reward, step)

    def epoch(self, step: int, metrics: Mapping[str, Any], captions: Sequence[str], references: Sequence[str]) -> None:
        for name in SCALARS:
            if isinstance(metrics.get(name), (int, float)):
                self.writer.add_scalar(f"val/{name}", metrics[name], step)
        rows = [f"| {caption} | {reference} |" for caption, reference in zip(captions[:EXAMPLES], references)]
        self.writer.add_text("val/examples", "\n".join(["| generated | a reference |", "|---|---|", *rows]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def require_tensorboard(enabled: bool) -> None:
    """With `train.tensorboard` on, refuse the run at once (before its directory is made) when the
    package is missing."""
    if not enabled:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401  torch's writer needs the tensorboard package
    except ImportError:
        raise ConfigError('train.tensorboard=true needs the tensorboard package: pip install -e ".[tensorboard]" '
                          "(or set train.tensorboard=false)") from None


def open_log(enabled: bool, run_dir: Path) -> TensorBoardLog | None:
    """The run's TensorBoard log, or None when `train.tensorboard` is off (or on a rank other than 0)."""
    return TensorBoardLog(run_dir) if enabled else None
