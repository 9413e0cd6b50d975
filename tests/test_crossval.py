"""`python -m captioner.crossval`: folds by image, deterministic per seed, one JSON with every fold."""
from __future__ import annotations

import json
import random

import pytest
from conftest import REPO, tiny_overrides

from captioner.crossval import REPORTED, fold_splits, main, naming_percent, pooled_scores
from captioner.data.records import ImageRecord


def records(count: int) -> list[ImageRecord]:
    return [ImageRecord(f"img{i}", f"/photos/img{i:03d}.jpg", (f"caption {i} a", f"caption {i} b"), "train")
            for i in range(count)]


def test_folds_split_by_image_and_cover_every_image_once():
    images = records(23)
    folds = fold_splits(images, 5, seed=0, val_fraction=0.2)
    held_out = [record.path for splits in folds for record in splits["test"]]
    assert sorted(held_out) == sorted(record.path for record in images)  # each image scored exactly once
    for splits in folds:
        paths = {split: {record.path for record in splits[split]} for split in splits}
        assert not paths["train"] & paths["test"] and not paths["val"] & paths["test"] and not paths["train"] & paths["val"]
        assert len(paths["train"]) + len(paths["val"]) + len(paths["test"]) == 23
        assert len(paths["val"]) == round(0.2 * (23 - len(paths["test"])))
        assert all(record.split == split for split in splits for record in splits[split])
        by_path = {record.path: record for record in images}  # every caption travels with its image
        assert all(record.captions == by_path[record.path].captions for split in splits for record in splits[split])


def test_folds_are_deterministic_per_seed_whatever_the_reading_order():
    images = records(30)
    shuffled = list(images)
    random.Random(7).shuffle(shuffled)
    same = [[r.path for r in s["test"]] for s in fold_splits(images, 3, seed=1, val_fraction=0.1)]
    assert same == [[r.path for r in s["test"]] for s in fold_splits(shuffled, 3, seed=1, val_fraction=0.1)]
    assert same != [[r.path for r in s["test"]] for s in fold_splits(images, 3, seed=2, val_fraction=0.1)]


def test_bad_folds_are_refused():
    with pytest.raises(ValueError, match="--folds 1"):
        fold_splits(records(10), 1, 0, 0.1)
    with pytest.raises(ValueError, match="cannot fill 6 folds"):
        fold_splits(records(10), 6, 0, 0.1)
    with pytest.raises(ValueError, match="listed twice"):
        fold_splits(records(4) + records(4), 2, 0, 0.1)


def test_crossval_command_on_a_tiny_dataset(tmp_path, capsys):
    """Two folds of the tiny built-in dataset, one epoch each: one JSON with both folds, the config's
    decoding and a compared one, and the mean ± sd of every reported metric."""
    overrides = [*tiny_overrides(tmp_path / "data", tmp_path / "run"), "train.epochs=1"]
    output = tmp_path / "cv.json"
    code = main(["--config", str(REPO / "configs/shapes.yaml"), "--folds", "2", "--seeds", "3",
                 "--compare", "eval.no_repeat_content_words=true", "--output", str(output), *overrides])
    assert code == 0
    report = json.loads(output.read_text())
    assert [(run["seed"], run["fold"]) for run in report["runs"]] == [(3, 0), (3, 1)]
    held_out = [image for run in report["runs"] for image in run["held_out"]]
    assert len(held_out) == len(set(held_out)) == 96  # 64 + 16 + 16 images, each scored once
    for run in report["runs"]:
        assert run["images"]["test"] == 48 and run["images"]["val"] == round(0.13 * 48)
        assert set(run["scores"]) == {"config", "eval.no_repeat_content_words=true"}
        assert (tmp_path / "run" / "crossval" / "seed-3" / f"fold-{run['fold']}" / "best.pt").is_file()
    for variant in report["summary"].values():
        assert set(variant) == set(REPORTED) and all(metric["n"] == 2 for metric in variant.values())
    assert str(output) in capsys.readouterr().out
    again = tmp_path / "again.json"  # the same folds' checkpoints, scored again without training
    assert main(["--config", str(REPO / "configs/shapes.yaml"), "--folds", "2", "--seeds", "3", "--rescore",
                 "--output", str(again), *overrides]) == 0
    rescored = json.loads(again.read_text())
    assert rescored["rescored"] and [run["held_out"] for run in rescored["runs"]] == [run["held_out"] for run in report["runs"]]
    assert [run["scores"]["config"] for run in rescored["runs"]] == [run["scores"]["config"] for run in report["runs"]]
    assert [run["best_epoch"] for run in rescored["runs"]] == [run["best_epoch"] for run in report["runs"]]


def test_crossval_refuses_a_compared_setting_outside_eval(tmp_path, capsys):
    code = main(["--config", str(REPO / "configs/shapes.yaml"), "--compare", "model.dropout=0.5",
                 f"run_dir={tmp_path / 'never'}"])
    assert code == 2 and "--compare model.dropout=0.5" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_naming_and_pooled_scores_count_every_held_out_caption_once():
    """--name-words: the share of captions naming a word; pooled: all folds' captions scored together."""
    captions = ["a jet on the runway", "a man", "two planes", "an airplane"]
    assert naming_percent(captions, frozenset({"jet", "airplane"})) == 50.0  # "planes" is another word
    photos = [ImageRecord(f"img{i}", f"/photos/img{i}.jpg", ("a white jet on the runway",), "test") for i in range(4)]
    runs = [{"seed": 0, "captions": {"config": {"img0": "a white jet on the runway", "img1": "a man"}}},
            {"seed": 0, "captions": {"config": {"img2": "a white jet on the runway", "img3": "a dog"}}}]
    pooled = pooled_scores(runs, {photo.image_id: photo for photo in photos}, frozenset({"jet"}))["seed-0"]["config"]
    assert pooled["images"] == 4 and pooled["naming_percent"] == 50.0
    assert 0.0 < pooled["bleu4"] < 100.0  # two exact captions and two without a 4-gram in common
