"""Where a run stands (`Progress`, saved in every checkpoint as a plain dict with `asdict`) and what a
resume reads back: the checkpoint --resume names, the same model, the best score to beat."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from captioner.checkpoint import CheckpointError, read_checkpoint
from captioner.config import Config, to_dict

CHECKPOINT_METRICS = {"bleu4": "BLEU-4", "cider": "CIDEr-D"}  # train.checkpoint_metric: its name in the log


@dataclass
class Progress:
    """The trainer's counters; a resume continues from them exactly."""

    epoch: int = 0  # epochs finished (validated and saved)
    batch: int = 0  # global batches of the current epoch done: a resume skips them, whatever the world size
    step: int = 0  # optimizer steps done
    best_score: float = -1.0  # best validation checkpoint_metric so far: best.pt's score
    checkpoint_metric: str = "bleu4"  # the metric best_score is in (train.checkpoint_metric)
    last_loss: float | None = None  # the loss of the last step
    last_reward: float = 0.0  # self-critical: the last batch's mean reward
    reward_sum: float = 0.0  # self-critical: rewards summed over this epoch's steps, for its mean
    reward_steps: int = 0  # self-critical: how many steps reward_sum holds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], metric: str) -> "Progress":
        """A checkpoint's progress, for a run choosing best.pt by `metric`. Keys an earlier version did not
        write take their defaults (its dict had no reward counters outside self-critical epochs)."""
        known = {f.name for f in fields(cls)} - {"best_score", "checkpoint_metric"}
        return cls(**{key: value for key, value in saved.items() if key in known},
                   best_score=recorded_best_score(saved, metric), checkpoint_metric=metric)


def recorded_best_score(progress: dict[str, Any], metric: str) -> float:
    """The best validation `metric` a checkpoint's progress holds, or -1 when it chose by another metric
    (a resume that changes train.checkpoint_metric: best_score_on_disk then reads best.pt's own score).
    Checkpoints written before train.checkpoint_metric existed chose by BLEU-4 and call it best_bleu4."""
    if progress.get("checkpoint_metric", "bleu4") != metric:
        return -1.0
    return progress.get("best_score", progress.get("best_bleu4", -1.0))


def best_score_on_disk(run_dir: Path, recorded: float, metric: str) -> float:
    """The best validation score (`metric`) to beat after a resume: `recorded` (last.pt's), or best.pt's own
    score when that is higher. A kill between the two saves leaves best.pt one epoch ahead of last.pt; on a
    GPU the repeated epoch need not score the same, and must not replace a better best.pt."""
    best = run_dir / "best.pt"
    if not best.is_file():
        return recorded
    score = read_checkpoint(best).get("metrics", {}).get(metric)
    return max(recorded, score) if isinstance(score, (int, float)) else recorded



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

