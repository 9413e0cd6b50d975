"""A checkpoint saved by an earlier version (tests/data/landed_main_checkpoint) still evaluates and
resumes: its progress was a plain dict, the trainer's state now is a dataclass."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from captioner.training.progress import Progress

REPO = Path(__file__).resolve().parents[1]
LANDED = REPO / "tests" / "data" / "landed_main_checkpoint" / "last.pt"
DATA = ["data.synthetic.num_train=64", "data.synthetic.num_val=16", "data.synthetic.num_test=16"]


def run(*command: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_landed_checkpoint_evaluates(tmp_path: Path) -> None:
    output = tmp_path / "metrics.json"
    run("-m", "captioner.evaluation", "--checkpoint", str(LANDED), "--data-root", str(tmp_path / "shapes"),
        "--split", "val", "--beam-size", "1", "--no-meteor", "--output", str(output))
    report = json.loads(output.read_text())
    assert len(report["captions"]) == 16 and 0 <= report["metrics"]["bleu4"] <= 100


def test_landed_checkpoint_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(LANDED, run_dir / "last.pt")
    run("train.py", "--config", "configs/shapes.yaml", "--resume", str(run_dir), f"run_dir={run_dir}",
        f"data.root={tmp_path / 'shapes'}", *DATA, "model.embed_size=8", "model.hidden_size=16",
        "model.freeze_encoder=true", "train.epochs=2", "train.batch_size=16", "train.threads=1",
        "train.warmup_steps=2", "eval.beam_size=1", "eval.meteor=false",
        "model.attention_query=previous", "model.attention_size=0", "train.learning_rate=0.003")  # shapes.yaml then
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in history] == [1, 2]  # the saved epoch kept, one more trained
    assert history[1]["step"] == 8


def test_progress_reads_older_dicts_and_saves_plain_data() -> None:
    saved = torch.load(LANDED, weights_only=True)["progress"]  # written as a dict by the earlier trainer
    progress = Progress.from_dict(saved, "bleu4")
    assert (progress.epoch, progress.batch, progress.step, progress.reward_steps) == (1, 0, 4, 0)
    assert progress.last_loss == saved["last_loss"] and progress.best_score == saved["best_score"]
    older = {"epoch": 2, "batch": 0, "step": 8, "best_bleu4": 12.5, "reward_sum": 1.5, "reward_steps": 3}
    assert Progress.from_dict(older, "bleu4") == Progress(epoch=2, step=8, best_score=12.5, reward_sum=1.5,
                                                          reward_steps=3)
    assert Progress.from_dict(older, "cider").best_score == -1.0  # chosen by another metric: best.pt is read
    assert Progress.from_dict(progress.to_dict(), "bleu4") == progress
