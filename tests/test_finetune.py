"""Fine-tuning (train.init_from, captioner/training/init_from.py): the vocabulary merge keeps every old
word's id and rows, new words get new ids and rows, every other weight is the initial model's before
the first step; a tiny fine-tuning run goes end to end through train.py, evaluates, resumes from its
own checkpoint and becomes a release."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO
from PIL import Image

from captioner import evaluation, from_pretrained, load_checkpoint, make_release
from captioner.checkpoint import read_checkpoint, save_checkpoint
from captioner.config import Config, ConfigError, ModelConfig, load_config, to_dict
from captioner.model import Captioner
from captioner.training.init_from import (
    VOCABULARY_ROWS,
    adopt_model_config,
    copy_initial_weights,
    extended_vocabulary,
    fine_tuning_start,
    new_rows,
)
from captioner.vocab import Vocabulary

TINY = ModelConfig(embed_size=16, hidden_size=24, dropout=0.0)  # small_cnn, Show and Tell
OLD_WORDS = ["a", "red", "circle", "blue", "square"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "silver": (190, 190, 200), "white": (240, 240, 240)}


def tiny_overrides(root: Path, run_dir: Path) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", "data.min_word_count=2", "train.epochs=2",
            "train.batch_size=4", "train.warmup_steps=1", "eval.beam_size=2", "eval.val_beam_size=1",
            "eval.meteor=false", "data.feature_cache=false"]


@pytest.fixture(scope="module")
def initial_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny small_cnn model that knows OLD_WORDS, saved as a training checkpoint."""
    torch.manual_seed(0)
    model = Captioner(TINY, Vocabulary(OLD_WORDS))
    path = tmp_path_factory.mktemp("initial") / "best.pt"
    save_checkpoint({"config": to_dict(Config(model=TINY)), "vocab": model.vocab.to_dict(),
                     "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def plane_folder(tmp_path_factory) -> Path:
    """12 one-colour photos in the folder format, captioned with words the initial model lacks."""
    root = tmp_path_factory.mktemp("planes")
    (root / "images").mkdir()
    lines = ["image,caption"]
    for index in range(12):
        colour = list(COLOURS)[index % len(COLOURS)]
        Image.new("RGB", (64, 64), COLOURS[colour]).save(root / "images" / f"{index}.jpg")
        lines += [f"{index}.jpg,a {colour} plane on the runway", f"{index}.jpg,a {colour} jet"]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root


def test_the_vocabulary_keeps_old_ids_and_appends_the_new_words():
    old = Vocabulary(OLD_WORDS)
    merged = extended_vocabulary(old, ["a plane", "a red plane", "a jet", "the jet", "one tank"], min_count=2)
    assert merged.words[: len(old)] == old.words  # every old word keeps its id
    assert merged.words[len(old):] == ("jet", "plane")  # the new words that pass min_count, by count then name


def test_every_weight_is_the_initial_models_and_the_rows_grow(initial_checkpoint):
    initial = load_checkpoint(initial_checkpoint)
    vocab = extended_vocabulary(initial.vocab, ["a plane", "a plane jet", "a jet"], min_count=1)
    model = Captioner(initial.config, vocab)
    copy_initial_weights(model, initial, "mean")
    ours, theirs = model.state_dict(), initial.state_dict()
    old = len(initial.vocab)
    for name, tensor in theirs.items():
        if name in VOCABULARY_ROWS:
            assert len(ours[name]) == old + 2, name
            assert torch.equal(ours[name][:old], tensor), name  # old words keep their learned rows
            assert torch.equal(ours[name][old:], tensor[4:].mean(dim=0).expand(2, *tensor.shape[1:])), name
        else:
            assert torch.equal(ours[name], tensor), name


def test_the_new_word_rows_follow_the_rule():
    torch.manual_seed(0)
    rows = torch.randn(9, 6) * 3 + 1  # (V, E): 4 specials, 5 words
    assert torch.equal(new_rows(rows, 2, "unk", unk_id=3), rows[3].expand(2, 6))
    assert torch.allclose(new_rows(rows, 2, "mean", unk_id=3), rows[4:].mean(dim=0).expand(2, 6))
    drawn = new_rows(rows, 4000, "normal", unk_id=3)
    assert drawn.shape == (4000, 6)
    assert torch.allclose(drawn.mean(dim=0), rows[4:].mean(dim=0), atol=0.3)
    assert torch.allclose(drawn.std(dim=0), rows[4:].std(dim=0), rtol=0.1)
    assert new_rows(rows[:, 0], 3, "mean", unk_id=3).shape == (3,)  # an output bias has one value per word


def test_before_the_first_step_the_run_holds_the_initial_model(initial_checkpoint, plane_folder, tmp_path):
    """The Trainer of a fine-tuning run: the initial model's config, its words first, its weights."""
    from captioner.training.trainer import Trainer

    config = load_config(REPO / "configs/finetune.yaml", [*tiny_overrides(plane_folder, tmp_path / "run"),
                                                          f"train.init_from={initial_checkpoint}"])
    trainer = Trainer(config, log=lambda line: None)
    initial = load_checkpoint(initial_checkpoint)
    assert trainer.config.model == replace(initial.config, pretrained=False)
    assert trainer.vocab.words[: len(initial.vocab)] == initial.vocab.words
    assert {"plane", "jet", "runway"} <= set(trainer.vocab.words[len(initial.vocab):])
    ours = trainer.model.state_dict()
    for name, tensor in initial.state_dict().items():
        assert torch.equal(ours[name][: len(tensor)] if name in VOCABULARY_ROWS else ours[name], tensor), name
    trainer.lock.release()


def test_a_release_directory_is_a_starting_point(initial_checkpoint, tmp_path):
    initial = load_checkpoint(initial_checkpoint)
    initial.save_pretrained(tmp_path / "release")
    config = load_config(None, [f"train.init_from={tmp_path / 'release'}"])
    adopted, model = fine_tuning_start(config, resumed=None)
    assert adopted.model == replace(initial.config, pretrained=False) and model.vocab == initial.vocab
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in initial.state_dict().items())


def test_a_model_key_that_contradicts_the_initial_model_is_refused_by_name():
    config = load_config(None, ["train.init_from=somewhere", "model.dropout=0.5"])
    with pytest.raises(ConfigError, match=r"^model\.dropout=0\.5: .* whose model\.dropout is 0\.0"):
        adopt_model_config(config, TINY)
    same = load_config(None, ["train.init_from=somewhere", "model.hidden_size=24"])  # agrees: fine
    assert adopt_model_config(same, TINY).model == TINY
    with pytest.raises(ConfigError, match=r"train\.new_word_init"):
        load_config(None, ["train.new_word_init=zero"])  # one of mean, unk, normal


def test_a_resume_keeps_its_own_starting_point():
    resumed = {"config": to_dict(Config(model=TINY, train=replace(Config().train, init_from="base")))}
    for given in ([], ["train.init_from=other"]):  # a resume continues its checkpoint, never another model
        config, initial = fine_tuning_start(load_config(None, given), resumed)
        assert initial is None and config.model == replace(TINY, pretrained=False)
        assert config.train.init_from == "base"
    scratch = {"config": to_dict(Config(model=TINY))}
    config, initial = fine_tuning_start(load_config(None, ["train.init_from=other"]), scratch)
    assert initial is None and config.train.init_from == "" and config.model == ModelConfig()


def run(*arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_tiny_fine_tuning_run_end_to_end(initial_checkpoint, plane_folder, tmp_path):
    """train.py --init-from, then the evaluation command, a resume without the initial model, a release."""
    initial = tmp_path / "initial.pt"
    initial.write_bytes(initial_checkpoint.read_bytes())
    run_dir = tmp_path / "run"
    result = run("train.py", "--config", "configs/finetune.yaml", "--init-from", str(initial),
                 *tiny_overrides(plane_folder, run_dir))
    assert f"fine-tuning {initial}: its 9 words" in result.stdout
    saved = read_checkpoint(run_dir / "last.pt")
    assert saved["config"]["train"]["init_from"] == str(initial) and saved["config"]["model"]["hidden_size"] == 24
    assert tuple(saved["vocab"]["words"][:9]) == Vocabulary(OLD_WORDS).words and "plane" in saved["vocab"]["words"]
    assert evaluation.main(["--checkpoint", str(run_dir / "best.pt"), "--split", "val", "--no-meteor",
                            "--beam-size", "2", "--output", str(tmp_path / "scores.json")]) == 0  # in-process: no start-up
    assert (tmp_path / "scores.json").is_file()
    initial.unlink()  # a resume continues last.pt and never reads init_from again
    resumed = run("train.py", "--config", "configs/finetune.yaml", "--resume", str(run_dir),
                  *tiny_overrides(plane_folder, run_dir), "train.epochs=3")
    assert "resumed from" in resumed.stdout and "fine-tuning" not in resumed.stdout
    assert read_checkpoint(run_dir / "last.pt")["progress"]["epoch"] == 3
    assert make_release.main([str(run_dir / "best.pt"), str(tmp_path / "release")]) == 0
    model = from_pretrained(tmp_path / "release")
    assert model.vocab == Vocabulary.from_dict(saved["vocab"])
    words = model.caption([Image.new("RGB", (64, 64), COLOURS["silver"])])[0].split()
    assert set(words) <= set(model.vocab.words[4:])
