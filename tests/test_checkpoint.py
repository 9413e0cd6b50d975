"""Checkpoints: plain data, atomic writes, safe loads, identical captions after a round trip."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_model import make_model

from captioner import CheckpointError, load_checkpoint
from captioner.checkpoint import FORMAT_VERSION, read_checkpoint, save_checkpoint
from captioner.config import Config, to_dict
from captioner.data.records import ImageRecord
from captioner.evaluation import evaluate


def payload(model) -> dict:
    return {"config": to_dict(Config(model=model.config)), "vocab": model.vocab.to_dict(), "model": model.state_dict()}


def test_round_trip_gives_identical_captions(tmp_path):
    model = make_model().eval()
    path = tmp_path / "model.pt"
    save_checkpoint(payload(model), path)
    raw = torch.load(path, weights_only=True)  # plain data: loads with weights_only
    assert raw["format_version"] == FORMAT_VERSION and set(raw) >= {"config", "vocab", "model"}
    loaded = load_checkpoint(path)
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    assert loaded.decoding == model.decoding  # the run's eval section: here EvalConfig's defaults
    assert [g.token_ids for g in loaded.generate(images)] == [g.token_ids for g in model.generate(images)]


def test_a_checkpoint_with_the_retired_attention_score_bias_still_loads(tmp_path):
    """Checkpoints saved before the attention score lost its bias (the softmax cancels it: it never learned)."""
    model = make_model(decoder="attention_previous").eval()
    old = payload(model)
    old["model"] = {**old["model"], "decoder.score.bias": torch.tensor([0.1])}
    save_checkpoint(old, tmp_path / "old.pt")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert [g.token_ids for g in load_checkpoint(tmp_path / "old.pt").generate(images)] == \
           [g.token_ids for g in model.generate(images)]


def test_a_checkpoint_of_the_earlier_format_evaluates_with_its_own_eval_section(tmp_path):
    """Configs saved before the choices were typed and before `Decoding` hold the same plain strings and
    eval.* keys: they load, and the model captions as the run's eval section said."""
    model = make_model().eval()
    old = payload(model)
    old["config"]["eval"].update(beam_size=2, max_length=6, no_repeat_content_words=False, length_penalty=0.5)
    save_checkpoint(old, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.decoding == replace(model.decoding, beam_size=2, max_length=6, no_repeat_content_words=False,
                                      length_penalty=0.5)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    records = [ImageRecord(str(i), f"{i}.png", ("a red circle",), "test") for i in range(3)]
    metrics, captions = evaluate(loaded, records, "test", pixels=images, meteor=False)
    assert (metrics["beam_size"], metrics["length_penalty"]) == (2, 0.5)
    assert captions == [" ".join(g.words[0]) for g in model.generate(images, loaded.decoding)]


def test_failed_save_keeps_previous_file_byte_identical(tmp_path, monkeypatch):
    model = make_model()
    path = tmp_path / "last.pt"
    save_checkpoint(payload(model), path)
    before = path.read_bytes()

    def broken_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_checkpoint(payload(make_model(num_layers=1)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker), "config": {}}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_damaged_missing_and_incompatible(tmp_path):
    model = make_model()
    path = tmp_path / "model.pt"
    save_checkpoint(payload(model), path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    wrong = payload(model)
    wrong["config"]["model"]["hidden_size"] = 64
    save_checkpoint(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"shape \(192, 32\) in the checkpoint, but the config and vocabulary give \(256, 32\)"):
        load_checkpoint(tmp_path / "wrong.pt")
    newer = payload(model)
    torch.save({**newer, "format_version": FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1}"):
        read_checkpoint(tmp_path / "newer.pt")


def test_a_checkpoint_with_a_retired_weight_is_refused_for_resume_with_the_reason(tmp_path):
    """Its optimizer state has a slot for the retired weight: resuming would misalign every Adam moment."""
    from captioner.training.trainer import Trainer

    model = make_model(decoder="attention_previous")
    old = {**payload(model), "optimizer": {}, "scheduler": {}, "progress": {}}
    old["model"] = {**old["model"], "decoder.score.bias": torch.tensor([0.1])}
    save_checkpoint(old, tmp_path / "old.pt")
    trainer = Trainer.__new__(Trainer)  # restore() alone: no data, no run directory
    trainer.model = make_model(decoder="attention_previous")
    with pytest.raises(CheckpointError, match=r"old.pt: saved by an earlier version \(with decoder.score.bias\)"):
        trainer.restore(torch.load(tmp_path / "old.pt", weights_only=True), tmp_path / "old.pt")
