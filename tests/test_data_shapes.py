"""Tests of the built-in shapes dataset: determinism, regeneration, JSON schema, scenes, images, caption variety."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.config import ConfigError, SyntheticConfig
from captioner.data import shapes
from captioner.data.records import DatasetFormatError
from captioner.data.shapes import (
    COLOURS,
    JSON_NAME,
    MAX_WORDS,
    ensure_shapes_dataset,
    sample_scene,
    scene_captions,
)
from captioner.metrics.bleu import reference_bleu
from captioner.vocab import tokenize

TINY = SyntheticConfig(num_train=20, num_val=5, num_test=5, image_size=64, seed=3)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    json_path = ensure_shapes_dataset(tmp_path_factory.mktemp("shapes"), TINY)
    return json_path, json.loads(json_path.read_text())


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _sample_scenes(count: int, image_size: int = 64) -> list[tuple[dict, list[str]]]:
    scenes = []
    for index in range(count):
        rng = random.Random(index)
        scene = sample_scene(rng, image_size)
        scenes.append((scene, scene_captions(scene, rng)))
    return scenes


def test_same_parameters_give_byte_identical_files(tmp_path: Path) -> None:
    ensure_shapes_dataset(tmp_path / "first", TINY)
    ensure_shapes_dataset(tmp_path / "second", TINY)
    first, second = _all_bytes(tmp_path / "first"), _all_bytes(tmp_path / "second")
    assert len(first) == 31  # 30 images + the JSON, no temporary files left behind
    assert first == second


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    ensure_shapes_dataset(tmp_path / "first", TINY)
    ensure_shapes_dataset(tmp_path / "second", SyntheticConfig(20, 5, 5, 64, seed=4))
    first, second = _all_bytes(tmp_path / "first"), _all_bytes(tmp_path / "second")
    assert sum(first[name] == second[name] for name in first) == 0


def test_complete_dataset_is_not_generated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    json_path = ensure_shapes_dataset(tmp_path, TINY)

    def refuse(*args: object) -> None:
        raise AssertionError("regenerated although nothing changed")

    monkeypatch.setattr(shapes, "_generate", refuse)
    assert ensure_shapes_dataset(tmp_path, TINY) == json_path


def test_changed_parameters_regenerate_and_drop_stale_images(tmp_path: Path) -> None:
    ensure_shapes_dataset(tmp_path, TINY)
    before = _all_bytes(tmp_path)
    smaller = SyntheticConfig(num_train=10, num_val=5, num_test=5, image_size=64, seed=3)
    dataset = json.loads(ensure_shapes_dataset(tmp_path, smaller).read_text())
    after = _all_bytes(tmp_path)
    assert dataset["generator"]["num_train"] == 10 and len(dataset["images"]) == 20
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [f"{index:05d}.jpg" for index in range(20)]
    assert after[JSON_NAME] != before[JSON_NAME]


@pytest.mark.parametrize("damage", ["delete_json", "delete_image", "truncate_json", "old_version"])
def test_incomplete_dataset_is_generated_again(tmp_path: Path, damage: str) -> None:
    json_path = ensure_shapes_dataset(tmp_path, TINY)
    original = _all_bytes(tmp_path)
    if damage == "delete_json":  # what a run killed before the final rename leaves
        json_path.unlink()
    elif damage == "delete_image":
        (tmp_path / "images" / "00007.jpg").unlink()
    elif damage == "truncate_json":
        json_path.write_text(json_path.read_text()[:100])
    else:
        dataset = json.loads(json_path.read_text())
        dataset["generator"]["version"] -= 1
        json_path.write_text(json.dumps(dataset))
    ensure_shapes_dataset(tmp_path, TINY)
    assert _all_bytes(tmp_path) == original


def test_json_has_the_karpathy_fields_and_ground_truth(tiny_dataset: tuple[Path, dict]) -> None:
    json_path, dataset = tiny_dataset
    assert dataset["dataset"] == "shapes"
    images = dataset["images"]
    assert [entry["split"] for entry in images] == ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    assert [entry["imgid"] for entry in images] == list(range(30))
    all_sentids = [sentid for entry in images for sentid in entry["sentids"]]
    assert len(all_sentids) == len(set(all_sentids)) == 150
    for entry in images:
        assert entry["filepath"] == "images" and entry["filename"] == f"{entry['imgid']:05d}.jpg"
        assert (json_path.parent / entry["filepath"] / entry["filename"]).is_file()
        assert [sentence["sentid"] for sentence in entry["sentences"]] == entry["sentids"]
        for sentence in entry["sentences"]:
            assert sentence["imgid"] == entry["imgid"] and sentence["tokens"] == tokenize(sentence["raw"])
        scene = entry["scene"]
        assert scene["image_size"] == 64 and scene["background"] in shapes.BACKGROUNDS
        assert 1 <= len(scene["objects"]) <= 3
        for item in scene["objects"]:
            assert set(item) == {"shape", "colour", "size", "x", "y", "radius"}
            assert item["shape"] in shapes.SHAPES and item["colour"] in COLOURS and item["size"] in ("small", "large")


def test_images_show_the_scene(tiny_dataset: tuple[Path, dict]) -> None:
    json_path, dataset = tiny_dataset
    for entry in dataset["images"]:
        image = Image.open(json_path.parent / "images" / entry["filename"])
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 64)
        pixels = np.asarray(image, dtype=np.float64)
        for item in entry["scene"]["objects"]:  # the patch at each centre has the object's colour
            x, y = int(item["x"]), int(item["y"])
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            nearest = min(COLOURS, key=lambda name: np.abs(patch - COLOURS[name]).sum())
            assert nearest == item["colour"], (entry["filename"], item, patch)


def test_scenes_have_separate_distinct_objects_of_clear_sizes() -> None:
    radii = {"small": [], "large": []}
    for scene, _ in _sample_scenes(400):
        objects = scene["objects"]
        assert len({(item["shape"], item["colour"]) for item in objects}) == len(objects)
        for index, item in enumerate(objects):
            radii[item["size"]].append(item["radius"])
            assert item["radius"] < item["x"] < 64 - item["radius"] and item["radius"] < item["y"] < 64 - item["radius"]
            for other in objects[:index]:
                assert math.dist((item["x"], item["y"]), (other["x"], other["y"])) > item["radius"] + other["radius"]
    assert min(radii["large"]) > 1.5 * max(radii["small"])
    assert {len(scene["objects"]) for scene, _ in _sample_scenes(30)} == {1, 2, 3}


def test_captions_are_varied_short_and_use_a_small_vocabulary() -> None:
    words = set()
    for scene, captions in _sample_scenes(400):
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            tokens = tokenize(caption)
            assert 2 <= len(tokens) <= MAX_WORDS, caption
            words.update(tokens)
    assert len(words) < 60, sorted(words)
    assert {"left", "right", "above", "below", "two", "three", "small", "large"} <= words


def test_references_vary_enough(tmp_path: Path) -> None:
    json_path = ensure_shapes_dataset(tmp_path, SyntheticConfig(num_train=1, num_val=0, num_test=150, image_size=32))
    images = json.loads(json_path.read_text())["images"]
    scores = reference_bleu([[sentence["tokens"] for sentence in image["sentences"]]
                             for image in images if image["split"] == "test"])
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"}
    assert 20 < scores["bleu4"] <= 75, scores  # varied, yet about the same scene
    assert scores["bleu1"] > scores["bleu2"] > scores["bleu3"] > scores["bleu4"]
    with pytest.raises(ValueError, match="no images"):
        reference_bleu([])


def test_bad_parameters_and_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.synthetic\.image_size: expected an integer >= 32, got 16"):
        ensure_shapes_dataset(tmp_path, SyntheticConfig(image_size=16))
    with pytest.raises(ConfigError, match=r"data\.synthetic\.num_train"):
        ensure_shapes_dataset(tmp_path, SyntheticConfig(num_train=0))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatasetFormatError, match="expected a directory"):
        ensure_shapes_dataset(blocker, TINY)
