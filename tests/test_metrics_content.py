"""Tests of content accuracy: captions are parsed into facts, true ones pass, wrong ones are caught."""
from __future__ import annotations

import random
import re

import pytest

from captioner.data.shapes import COLOURS, sample_scene, scene_captions
from captioner.metrics.content import Mention, content_accuracy, judge_caption, parse_caption


def _object(shape: str, colour: str, size: str, x: float, y: float) -> dict:
    return {"shape": shape, "colour": colour, "size": size, "x": x, "y": y, "radius": 8.0}


# a small red circle at the left, a large blue square at the right, a small green triangle at the top middle
SCENE = {"image_size": 64, "background": "white", "objects": [
    _object("circle", "red", "small", 12, 40), _object("square", "blue", "large", 48, 40),
    _object("triangle", "green", "small", 30, 10)]}
TRUE = "three shapes: a small red circle to the left of a large blue square, and a green triangle"


def _generated(count: int) -> tuple[list[str], list[dict]]:
    captions, scenes = [], []
    for index in range(count):
        rng = random.Random(1000 + index)
        scene = sample_scene(rng, 64)
        for caption in scene_captions(scene, rng):
            captions.append(caption)
            scenes.append(scene)
    return captions, scenes


def test_parse_reads_count_objects_relations_and_background() -> None:
    text = "Two shapes: a big blue square is on the right of one little red circle, on a gray background."
    parsed = parse_caption(text)
    assert parsed.count == 2 and parsed.background == "grey"
    assert parsed.objects == (Mention("large", "blue", "square"), Mention("small", "red", "circle"))
    assert parsed.relations == ((0, "right", 1),)


def test_parse_resolves_the_and_multiplies_numbers() -> None:
    parsed = parse_caption("a red circle left of a blue square, and the square is below a green triangle")
    assert parsed.count is None and len(parsed.objects) == 3
    assert parsed.relations == ((0, "left", 1), (1, "below", 2))
    assert parse_caption("two red circles above a square").objects == (Mention(None, "red", "circle"),) * 2 + (
        Mention(None, None, "square"),)
    assert parse_caption("the red circle").objects == (Mention(None, "red", "circle"),)  # nothing to refer to
    assert parse_caption("a red background").objects == ()


def test_true_captions_score_right_in_any_order_of_mention() -> None:
    for caption in (TRUE, "a green triangle, a blue square and a red circle",
                    "a green triangle over a red circle, and the circle is left of a blue square",
                    "three objects: a large blue square below a triangle, and a circle on a white background"):
        assert judge_caption(caption, SCENE).entirely_right, caption


@pytest.mark.parametrize("caption, wrong_part", [
    ("three shapes: a small purple circle to the left of a large blue square, and a green triangle", "colour"),
    ("three shapes: a large red circle to the left of a large blue square, and a green triangle", "size"),
    ("three shapes: a small red diamond to the left of a large blue square, and a green triangle", "shape"),
    ("three shapes: a small red circle to the right of a large blue square, and a green triangle", "relation"),
    ("three shapes: a small red circle above a large blue square, and a green triangle", "relation"),
    ("two shapes: a small red circle to the left of a large blue square, and a green triangle", "count"),
    ("a small red circle to the left of a large blue square", "count"),  # the triangle is missing
    ("a red circle, a blue square, a green triangle and a yellow circle", "count"),  # one too many
    ("a red circle, two blue squares and a green triangle", "count"),
    ("a red circle, a blue square and a green triangle on a pink background", "background"),
    ("a red circle, a blue square and a green triangle to the left of", "relation"),  # no object after it
])
def test_wrong_captions_are_caught(caption: str, wrong_part: str) -> None:
    judgement = judge_caption(caption, SCENE)
    assert not judgement.entirely_right
    if wrong_part == "count":
        assert not judgement.count_right
    else:
        right, stated = getattr(judgement, wrong_part)
        assert right < stated, judgement


def test_relation_needs_a_clear_margin() -> None:
    near = {"image_size": 64, "background": "white", "objects": [
        _object("circle", "red", "small", 30, 10), _object("square", "blue", "small", 33, 50)]}
    assert not judge_caption("a red circle left of a blue square", near).entirely_right  # 3 px is no margin
    assert judge_caption("a red circle above a blue square", near).entirely_right


def test_every_generated_reference_is_right_for_its_scene() -> None:
    captions, scenes = _generated(300)
    scores = content_accuracy(captions, scenes)
    for name in ("content_accuracy", "count", "shape", "colour", "size", "relation", "background"):
        assert scores[name] == 100.0, (name, scores)
    assert scores["captions"] == 1500 and scores["relations_stated"] > 300 and scores["backgrounds_stated"] > 200


def test_mutated_generated_references_are_all_wrong() -> None:
    captions, scenes = _generated(100)
    swaps = {"left": "right", "right": "left", "above": "below", "below": "above", "over": "under", "under": "over",
             "beneath": "over", "two": "three", "three": "two"}
    colour_names = list(COLOURS)
    mutated = 0
    for caption, scene in zip(captions, scenes):
        for word in re.findall(r"[a-z]+", caption):
            if word in COLOURS:  # every other colour for this mention
                replacements = [name for name in colour_names if name != word]
            elif word in swaps:  # "two" and "three" only appear as counts: "two shapes"
                replacements = [swaps[word]]
            else:
                continue
            for replacement in replacements:
                wrong = re.sub(rf"\b{word}\b", replacement, caption, count=1)
                assert not judge_caption(wrong, scene).entirely_right, (caption, wrong, scene)
                mutated += 1
    assert mutated > 1000


def test_aggregate_percentages() -> None:
    captions = [TRUE, "a red circle and a blue square",  # right objects, one missing
                "a red circle right of a blue square and a green triangle", "a purple circle"]
    scores = content_accuracy(captions, [SCENE] * 4)
    assert scores["content_accuracy"] == 25.0
    assert scores["count"] == 50.0  # first and third mention three objects
    assert scores["colour"] == pytest.approx(100 * 8 / 9)  # 9 stated colours, the purple one wrong
    assert scores["size"] == 100.0 and scores["relation"] == 50.0
    assert scores["background"] is None and scores["backgrounds_stated"] == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="got 2 captions for 1 scenes"):
        content_accuracy(["a", "b"], [SCENE])
    with pytest.raises(ValueError, match="scene: expected"):
        content_accuracy(["a red circle"], [{"objects": [{"shape": "circle"}]}])
