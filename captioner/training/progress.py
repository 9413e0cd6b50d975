"""Where a run stands (`Progress`, saved in every checkpoint as a plain dict with `asdict`) and what a
resume reads back: the checkpoint --resume names, the same model, the best score to beat."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from captioner.checkpoint import CheckpointError, read_checkpoint
from captioner.config import Config, to_dict
from captioner.training.randomness import check_rng_state

# train.checkpoint_metric: its name in the log. "epoch" keeps the last epoch, for a validation split too
# small to choose on (a few photos: docs/finetuning.md)
CHECKPOINT_METRICS = {"bleu4": "BLEU-4", "cider": "CIDEr-D", "epoch": "epoch"}


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
    threads: int = 0  # torch CPU threads of the run (0: on a GPU, or not recorded): a resume with
    #   train.threads=0 takes the same number, so that it stays bit for bit the uninterrupted run

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


TRAINING_STATE = ("progress", "optimizer", "scheduler", "rng")  # what a resume reads besides the weights
FIELD_CHECKS = {"int": lambda value: type(value) is int and value >= 0,
                "float": lambda value: type(value) in (int, float),
                "float | None": lambda value: value is None or type(value) in (int, float),
                "str": lambda value: isinstance(value, str)}  # Progress's annotations, as written


def check_resumable(saved: dict[str, Any], path: str | Path) -> None:
    """Refuse, in one line naming the entry, a checkpoint whose training state is missing or crafted
    (a count that is not a whole number, an RNG state that is not one), before any work."""
    missing = [name for name in TRAINING_STATE if name not in saved]
    if missing:
        raise CheckpointError(f"{path}: cannot be resumed, it holds no training state ({', '.join(missing)}); "
                              "resume from a last.pt that train.py wrote")
    progress = saved["progress"]
    if not isinstance(progress, dict):
        raise CheckpointError(f"{path}: its 'progress' entry is not a mapping")
    for field in fields(Progress):
        if field.name in progress and not FIELD_CHECKS[str(field.type)](progress[field.name]):
            raise CheckpointError(f"{path}: progress.{field.name} is {progress[field.name]!r:.60}, "
                                  f"not a valid {field.type}")
    for name in ("optimizer", "scheduler"):
        if not isinstance(saved[name], dict):
            raise CheckpointError(f"{path}: its '{name}' entry is not a state dict")
    history = saved.get("history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise CheckpointError(f"{path}: its 'history' entry is not a list of epochs")
    for state in [saved["rng"], *(saved.get("rank_rng") or [])]:
        try:
            check_rng_state(state)
        except Exception as error:  # torch and random raise assorted types on a crafted state
            raise CheckpointError(f"{path}: its 'rng' entry is not a random-number state "
                                  f"({type(error).__name__})") from None


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


# What a resume may change; everything else must be the checkpoint's own, or the resume is refused
# naming the key. The learning rates and the schedule take effect (Trainer.restore rebases them);
# eval.* and the keys of where and how fast the run goes change nothing that was trained.
RESUME_MAY_CHANGE = (
    "run_dir", "eval.", "train.epochs", "train.max_steps", "train.learning_rate", "train.encoder_learning_rate",
    "train.lr_schedule", "train.warmup_steps", "train.self_critical_epochs", "train.self_critical_learning_rate",
    "train.checkpoint_metric", "train.val_max_images", "train.device", "train.threads", "train.num_workers",
    "train.log_every", "train.tensorboard", "data.feature_cache_dir",
    "data.root",  # where the same data lives now: a moved or remounted folder; the data check reads it again
)
AT_EPOCH_END = ("train.batch_size",)  # mid-epoch it would skip or repeat images: only between epochs


def check_resume_changes(saved: dict[str, Any], config: Config, path: str | Path) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a key it may not change, naming the
    key and both values: the model first (its weights would not fit), then the rest. A key the saving
    version did not have yet reads as its default, as loading that checkpoint does."""
    if not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"{path}: not a captioner checkpoint (its 'config' entry is not a mapping)")
    before = {**_flat(to_dict(Config())), **_flat(saved["config"])}
    now = _flat(to_dict(config))
    changed = [key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    progress = saved.get("progress")
    batch = progress.get("batch", 0) if isinstance(progress, dict) else 0  # its type: check_resumable
    mid_epoch = type(batch) is int and batch > 0
    for key in sorted(changed, key=lambda key: not key.startswith("model.")):
        if key.startswith(RESUME_MAY_CHANGE) or (key in AT_EPOCH_END and not mid_epoch):
            continue
        when = " and it stopped mid-epoch (change it once an epoch is over)" if key in AT_EPOCH_END else ""
        raise CheckpointError(f"{path}: {key} is {before.get(key)!r} in the checkpoint but {now.get(key)!r} in "
                              f"this run's config{when}; a resume continues that run: resume with "
                              f"{key}={before.get(key)!r}, or start a new run")


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; a value that is not a section stays as it is."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
