"""train.checkpoint_metric chooses best.pt: by validation BLEU-4 (the default) or CIDEr-D, also after a
resume that changes it, and the self-critical epochs start from the checkpoint it chose. The validation
scores are scripted per epoch so that the two metrics disagree; everything else is a real tiny run."""
from __future__ import annotations

import pytest
import torch
from conftest import REPO, tiny_overrides

import train
from captioner.config import load_config
from captioner.training import trainer
from captioner.training.progress import recorded_best_score
from captioner.training.trainer import Trainer

CONFIG = str(REPO / "configs/shapes.yaml")
BLEU4_BY_EPOCH = {1: 30.0, 2: 20.0, 3: 25.0}  # BLEU-4 prefers epoch 1
CIDER_BY_EPOCH = {1: 40.0, 2: 60.0, 3: 35.0}  # CIDEr-D prefers epoch 2


@pytest.fixture
def scripted_scores(monkeypatch):
    real_evaluate = trainer.evaluate

    def evaluate(model, records, split, *args, **kwargs):
        metrics, captions = real_evaluate(model, records, split, *args, **kwargs)
        if split == "val":  # the epoch about to end is the trainer's progress.epoch + 1
            epoch = len(epochs_seen) + 1
            epochs_seen.append(epoch)
            metrics = {**metrics, "bleu4": BLEU4_BY_EPOCH[epoch], "cider": CIDER_BY_EPOCH[epoch]}
        return metrics, captions

    epochs_seen: list[int] = []
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    return epochs_seen


def run(tmp_path, *overrides: str, resume=None) -> Trainer:
    config = load_config(CONFIG, [*tiny_overrides(tmp_path / "data", tmp_path / "run"), "train.epochs=3", *overrides])
    fitted = Trainer(config, resume=resume, log=lambda message: None)
    try:
        fitted.fit()
    finally:
        fitted.lock.release()
    return fitted


def best_pt(tmp_path) -> dict:
    return torch.load(tmp_path / "run" / "best.pt", weights_only=True)


@pytest.mark.parametrize("metric, epoch", [("bleu4", 1), ("cider", 2)])
def test_best_pt_is_the_epoch_the_chosen_metric_prefers(tmp_path, scripted_scores, metric, epoch):
    run(tmp_path, f"train.checkpoint_metric={metric}")
    best = best_pt(tmp_path)
    assert best["progress"]["epoch"] == epoch and best["progress"]["checkpoint_metric"] == metric
    assert best["progress"]["best_score"] == {"bleu4": BLEU4_BY_EPOCH, "cider": CIDER_BY_EPOCH}[metric][epoch]


def test_self_critical_epochs_start_from_the_checkpoint_cider_chose(tmp_path, scripted_scores):
    lines: list[str] = []
    config = load_config(CONFIG, [*tiny_overrides(tmp_path / "data", tmp_path / "run"), "train.epochs=2",
                                  "train.self_critical_epochs=1", "train.checkpoint_metric=cider"])
    fitted = Trainer(config, log=lines.append)
    try:
        fitted.fit()
    finally:
        fitted.lock.release()
    assert "self-critical training from best.pt (val CIDEr-D 60.00)" in lines


def test_a_resume_that_changes_the_metric_compares_with_best_pt_on_the_new_metric(tmp_path, scripted_scores):
    """Two epochs by BLEU-4 keep epoch 1 (BLEU-4 30, CIDEr-D 40). Resumed by CIDEr-D, epoch 3's CIDEr-D 35
    beats the BLEU-4 30 that last.pt recorded, but not best.pt's own CIDEr-D: best.pt stays epoch 1."""
    run(tmp_path, "train.epochs=2")
    assert best_pt(tmp_path)["progress"]["epoch"] == 1
    run(tmp_path, "train.checkpoint_metric=cider", resume=tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["progress"]["epoch"] == 3 and last["progress"]["best_score"] == 40.0
    assert best_pt(tmp_path)["progress"]["epoch"] == 1


def test_an_unknown_metric_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    code = train.main(["--config", CONFIG, *tiny_overrides(tmp_path / "data", tmp_path / "run"),
                       "train.checkpoint_metric=loss"])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.count("\n") == 0, message
    assert "train.checkpoint_metric='loss': expected one of bleu4, cider" in message
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.pt"))


def test_a_checkpoint_from_before_the_metric_key_resumes_with_its_bleu4_record():
    older = {"epoch": 3, "batch": 0, "step": 30, "best_bleu4": 12.5}  # chose by BLEU-4, under this name
    assert recorded_best_score(older, "bleu4") == 12.5
    assert recorded_best_score(older, "cider") == -1.0  # best.pt's own CIDEr-D is read instead
    assert recorded_best_score({"best_score": 40.0, "checkpoint_metric": "cider"}, "cider") == 40.0
