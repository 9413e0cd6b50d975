"""Optional TensorBoard logging (train.tensorboard): a tiny run writes losses, the learning rate, every
validation metric and example captions; with the package missing, the run is refused before any work.
The same run has METEOR on, so its per-epoch history carries the whole metric table."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, tiny_overrides

from captioner.config import ConfigError
from captioner.metrics.meteor import unavailable_reason
from captioner.training import tensorboard


@pytest.mark.timeout(300)
def test_a_run_logs_losses_rate_metrics_and_captions(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "--config", "configs/shapes.yaml", *tiny_overrides(tmp_path / "data", run_dir),
               "train.epochs=1", "train.log_every=1", "train.tensorboard=true", "eval.meteor=true"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    events = event_accumulator.EventAccumulator(str(run_dir / tensorboard.FOLDER),
                                                size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "val/bleu4", "val/rouge_l", "val/cider"} <= scalars
    assert len(events.Scalars("train/loss")) == 4  # log_every=1: every step of the epoch (64 images / 16)
    texts = events.Tensors("val/examples/text_summary")
    assert texts and b"| generated | a reference |" in texts[0].tensor_proto.string_val[0]
    history = json.loads((run_dir / "history.jsonl").read_text().splitlines()[0])
    assert "val/meteor" not in scalars and "meteor" not in history  # validation leaves METEOR to the test
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if unavailable_reason() is None:
        assert 0 < metrics["meteor"] <= 100
    else:
        assert "METEOR left out" in result.stderr and "meteor" not in metrics


def test_without_the_package_the_run_is_refused_at_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails, as when it is missing
    with pytest.raises(ConfigError, match=r'train.tensorboard=true needs the tensorboard package: pip install -e "\.\[tensorboard\]"'):
        tensorboard.require_tensorboard(True)
    tensorboard.require_tensorboard(False)  # off: nothing is imported, nothing refused
