"""Shared fixtures: a tiny built-in dataset and a tiny trained checkpoint, made once per session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "flickr8k-sample"

torch.set_num_threads(2)


def tiny_overrides(data_root: Path, run_dir: Path) -> list[str]:
    """A config small enough to train in seconds on one CPU core. METEOR is off (no Java start-up per run);
    tests/test_training_tensorboard.py turns it on in a run, test_metrics_rouge_meteor.py checks its value."""
    return [f"data.root={data_root}", f"run_dir={run_dir}", "data.synthetic.num_train=64",
            "data.synthetic.num_val=16", "data.synthetic.num_test=16", "model.embed_size=32",
            "model.hidden_size=48", "train.epochs=2", "train.batch_size=16", "train.warmup_steps=2",
            "train.threads=1", "eval.beam_size=2", "eval.meteor=false",
            "train.learning_rate=0.01"]  # 8 steps: at shapes.yaml's 5e-3 the h_t decoder has not yet left "<end>"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: a second thread only adds synchronisation,
    which makes them ~10x slower on a busy 2-core machine. Use with pytest.mark.usefixtures."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Run train.py end to end on a tiny config; return the run directory."""
    root = tmp_path_factory.mktemp("tiny")
    run_dir = root / "run"
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/shapes.yaml"),
               *tiny_overrides(root / "data", run_dir)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    (root / "stdout.txt").write_text(result.stdout)  # what the user saw (tests/test_train.py reads it)
    (root / "stderr.txt").write_text(result.stderr)  # a log file, not a terminal (tests/test_resume.py reads it)
    return run_dir


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """runs/tiny/best.pt of a small untrained model (test_model.make_model): a real checkpoint in seconds."""
    from test_checkpoint import payload
    from test_model import make_model

    from captioner.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("runs") / "tiny" / "best.pt"
    path.parent.mkdir()
    save_checkpoint(payload(make_model()), path)
    return path
