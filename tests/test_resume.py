"""A resume means what it says, through train.py: the learning rate and the schedule may change and
then take effect; a change of batch size mid-epoch and every other change are refused naming the key;
a resume into another run_dir carries best.pt along; crafted training state is refused in one line;
a model too large for memory is refused before the data is read; a log file gets plain progress
lines, never tqdm's carriage-return frames."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides

import train
from captioner.checkpoint import save_checkpoint

CONFIG = str(REPO / "configs/shapes.yaml")


def resume(tiny_run: Path, target: Path, run_dir: Path, *extra: str) -> int:
    return train.main(["--config", CONFIG, "--resume", str(target),
                       *tiny_overrides(tiny_run.parent / "data", run_dir), *extra])


def test_a_new_learning_rate_and_schedule_take_effect_and_another_run_dir_gets_best_pt(tiny_run, tmp_path, capsys):
    """It kept the old rate, 0.003, while config.yaml and last.pt said 1e-05; into another run_dir it
    printed a best.pt that did not exist and tested the last weights."""
    run_dir = tmp_path / "continued"
    assert resume(tiny_run, tiny_run / "last.pt", run_dir, "train.epochs=3", "train.learning_rate=1e-5",
                  "train.lr_schedule=constant") == 0
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    assert [group["lr"] for group in saved["optimizer"]["param_groups"]] == [1e-5]  # constant after warm-up
    assert saved["scheduler"]["base_lrs"] == [1e-5] and saved["progress"]["step"] == 12
    printed = capsys.readouterr().out
    assert f"best checkpoint: {run_dir / 'best.pt'}" in printed and (run_dir / "best.pt").is_file()
    before = torch.load(tiny_run / "best.pt", weights_only=True)["metrics"]["bleu4"]
    after = torch.load(run_dir / "best.pt", weights_only=True)["metrics"]["bleu4"]
    assert after >= before  # the run's own best.pt, or a better one from the third epoch


def mid_epoch_copy(tiny_run: Path, tmp_path: Path, **entries) -> Path:
    """tiny_run's last.pt as if stopped at batch 2 of its last epoch, with `entries` replaced."""
    payload = torch.load(tiny_run / "last.pt", weights_only=True)
    payload["progress"].update(epoch=1, batch=2, step=6)
    payload.update(entries)
    path = tmp_path / "stopped" / "last.pt"
    path.parent.mkdir(exist_ok=True)
    save_checkpoint({key: value for key, value in payload.items() if key != "format_version"}, path)
    return path


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=8", "train.batch_size is 16 in the checkpoint but 8 in this run's config and it stopped "
                           "mid-epoch (change it once an epoch is over)"),
    ("train.seed=3", "train.seed is 0 in the checkpoint but 3 in this run's config; a resume continues that run: "
                     "resume with train.seed=0, or start a new run"),
    ("data.min_word_count=2", "data.min_word_count is 1 in the checkpoint but 2 in this run's config"),
    ("model.dropout=0.2", "model.dropout is 0.1 in the checkpoint but 0.2 in this run's config"),
])
def test_any_other_change_is_refused_naming_the_key(tiny_run, tmp_path, capsys, override, expected):
    """A batch size changed mid-epoch silently skipped 224 of 640 images."""
    target = mid_epoch_copy(tiny_run, tmp_path)
    assert resume(tiny_run, target, tmp_path / "run", override) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {target}: {expected}") and error.count("\n") == 1, error
    assert not (tmp_path / "run").exists()  # refused before the run directory, before the data


@pytest.mark.parametrize("entries, expected", [
    ({"rng": {"torch": torch.zeros(3, dtype=torch.uint8), "python": [3, [], None]}},
     "its 'rng' entry is not a random-number state (RuntimeError)"),
    ({"rng": [1, 2]}, "its 'rng' entry is not a random-number state (ValueError)"),
    ({"progress": {"epoch": 1, "batch": -4, "step": 6}}, "progress.batch is -4, not a valid int"),
    ({"progress": {"epoch": "one", "batch": 0, "step": 6}}, "progress.epoch is 'one', not a valid int"),
    ({"progress": {"epoch": 1, "batch": "2", "step": 6}}, "progress.batch is '2', not a valid int"),
    ({"progress": [1, 2]}, "its 'progress' entry is not a mapping"),
    ({"optimizer": [1, 2]}, "its 'optimizer' entry is not a state dict"),
    ({"optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}, "its optimizer or scheduler state does not fit"),
])
def test_crafted_training_state_is_refused_in_one_line(tiny_run, tmp_path, capsys, entries, expected):
    target = mid_epoch_copy(tiny_run, tmp_path, **entries)
    assert resume(tiny_run, target, tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {target}: ") and expected in error and error.count("\n") == 1, error


def test_a_model_too_large_for_memory_is_refused_before_the_data_is_read(tmp_path, capsys):
    """model.hidden_size=200000 (2.4 TB with its gradients and Adam state) used to fail after the whole
    data check; the data root here does not even exist."""
    code = train.main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'no-data'}",
                       "model.hidden_size=200000"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and not (tmp_path / "no-data").exists()
    assert re.fullmatch(r"error: model.embed_size=128, model.hidden_size=200000, model.num_layers=1: the model needs "
                        r"at least [\d,.]+ GB for its weights, gradients and Adam state, and cpu has [\d,.]+ GB "
                        r"available\n", error), error


def test_a_log_file_gets_plain_progress_lines_not_bar_frames(tiny_run):
    """tiny_run's stderr went to a pipe, as a redirected log does: no \\r frames, one line per update."""
    log = (tiny_run.parent / "stderr.txt").read_text()
    assert "\r" not in log and "it/s" not in log
    assert re.search(r"^epoch 1/2  batch 1/4  step 1  loss \d+\.\d+  captions/s \d+  lr \S+$", log, re.MULTILINE), log
