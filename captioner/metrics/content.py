"""Content accuracy on the built-in shapes data: is what a caption says true of its scene?

BLEU rewards wording; here a caption is read back into facts and checked against the scene's ground
truth (shapes.py). `parse_caption` reads the words of the generator's grammar (and close variants):

    mention   = [a | an | one | the | two | three ...] {size | colour} shape   "a small red circle"
    count     = number (shape | shapes | object | objects)                      "two shapes"
    relation  = mention relation-phrase mention                                 "... left of ..."
    background = colour "background"                                            "a white background"

A relation links the nearest mention before it to the nearest mention after it. A mention with
"the" refers back to the latest earlier mention it fits ("the square"), so it adds no object. A
number before a shape ("two red circles") is that many mentions. Other words are skipped.

`content_accuracy` then matches mentioned objects to distinct scene objects, choosing the matching
that maximises (objects right on every stated attribute, attributes right, relations true), and
returns percentages:

    content_accuracy  captions ENTIRELY right: as many objects mentioned as the scene holds, each one
                      right on every attribute it states, any stated count right, every stated
                      relation true, any stated background right
    shape             mentioned objects whose shape is that of the object they are matched to
                      (objects beyond the scene's number match nothing and count as wrong)
    colour, size      the same, over mentions that state a colour / a size
    count             captions mentioning exactly the scene's number of objects, with any stated
                      count equal to it too
    relation          stated relations that hold: the subject's centre lies in the stated direction
                      from the object's by at least JUDGE_MARGIN x image side (a relation missing its
                      subject or object is false); None when no caption states one
    background        stated backgrounds that are right; None when no caption states one

plus the plain numbers "captions", "relations_stated" and "backgrounds_stated".
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from captioner.data.shapes import BACKGROUNDS, COLOURS, RELATION_PHRASES, SHAPES, SIZE_WORDS, relation_offset
from captioner.vocab import tokenize

JUDGE_MARGIN = 0.1  # a stated relation holds when the centres differ this share of the side that way;
# half the generator's STATE_MARGIN, so a model is not failed for a relation a reader would accept

_SIZES = {word: size for size, words in SIZE_WORDS.items() for word in words} | {"tiny": "small", "huge": "large"}
_COLOURS = {name: name for name in COLOURS}
_BACKGROUNDS = {name: name for name in (*BACKGROUNDS, *COLOURS)} | {"gray": "grey"}
_SHAPES = {name: name for name in SHAPES} | {name + "s": name for name in SHAPES}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_ARTICLES = {"a", "an", "the"}
_GENERIC_NOUNS = {"shape", "shapes", "object", "objects"}
_OBJECT_KEYS = ("shape", "colour", "size", "x", "y")
_RELATIONS = sorted(((tuple(phrase.split()), name) for name, phrases in RELATION_PHRASES.items() for phrase in phrases),
                    key=lambda entry: -len(entry[0]))  # longest first: "to the left of" before "left of"
_RELATIONS += [(("underneath",), "below"), (("beside",), None)]  # "beside" states no direction: ignored


@dataclass(frozen=True)
class Mention:
    """One object a caption mentions; None where the caption leaves the attribute out."""

    size: Optional[str]
    colour: Optional[str]
    shape: str


@dataclass(frozen=True)
class ParsedCaption:
    count: Optional[int]  # the number of objects the caption states ("two shapes"), if any
    objects: tuple[Mention, ...]  # distinct objects mentioned, in order of first mention
    relations: tuple[tuple[Optional[int], str, Optional[int]], ...]  # (subject, relation, object) indices into objects
    background: Optional[str]  # the background colour it states, if any


def parse_caption(text: str) -> ParsedCaption:
    """Read the count, mentioned objects, relations and background out of a caption (grammar above)."""
    words = tokenize(text)
    objects: list[Mention] = []
    sequence: list[int | str] = []  # mention indices and relation names, in caption order
    count = background = None
    position = 0
    while position < len(words):
        word, following = words[position], words[position + 1] if position + 1 < len(words) else ""
        relation, length = _match_relation(words, position)
        if length:
            if relation is not None:
                sequence.append(relation)
        elif word in _BACKGROUNDS and following == "background":
            background, length = _BACKGROUNDS[word], 2
        elif word in _NUMBERS and following in _GENERIC_NOUNS:
            count, length = _NUMBERS[word], 2
        else:
            mentions, definite, length = _match_mention(words, position)
            for mention in mentions:
                sequence.append(_resolve(mention, definite, objects))
        position += max(length, 1)
    return ParsedCaption(count, tuple(objects), _link_relations(sequence), background)


def _match_relation(words: list[str], position: int) -> tuple[Optional[str], int]:
    for phrase, relation in _RELATIONS:
        if tuple(words[position:position + len(phrase)]) == phrase:
            return relation, len(phrase)
    return None, 0


def _match_mention(words: list[str], position: int) -> tuple[list[Mention], bool, int]:
    """Mentions of `[determiner] {size|colour} shape` starting at `position`; ([], False, 0) if none."""
    determiner = words[position] if words[position] in _ARTICLES or words[position] in _NUMBERS else None
    cursor = position + (determiner is not None)
    size = colour = None
    while cursor < len(words) and (words[cursor] in _SIZES or words[cursor] in _COLOURS):
        size, colour = _SIZES.get(words[cursor], size), _COLOURS.get(words[cursor], colour)
        cursor += 1
    if cursor >= len(words) or words[cursor] not in _SHAPES:
        return [], False, 0
    shape = _SHAPES[words[cursor]]
    copies = _NUMBERS.get(determiner, 1)  # "two red circle(s)" claims two objects, plural or not
    return [Mention(size, colour, shape)] * copies, determiner == "the", cursor + 1 - position


def _resolve(mention: Mention, definite: bool, objects: list[Mention]) -> int:
    """Index of the object meant: the latest earlier one a definite mention fits, else a new one."""
    if definite:
        for index in reversed(range(len(objects))):
            if _fits(mention, objects[index]):
                return index
    objects.append(mention)
    return len(objects) - 1


def _fits(mention: Mention, earlier: Mention) -> bool:
    same = [mention.shape == earlier.shape]
    same += [mention.colour == earlier.colour] if mention.colour and earlier.colour else []
    same += [mention.size == earlier.size] if mention.size and earlier.size else []
    return all(same)


def _link_relations(sequence: list[int | str]) -> tuple[tuple[Optional[int], str, Optional[int]], ...]:
    """Each relation joins the nearest mention before it to the nearest after it."""
    links = []
    for place, item in enumerate(sequence):
        if isinstance(item, str):
            before = [entry for entry in sequence[:place] if isinstance(entry, int)]
            after = [entry for entry in sequence[place + 1:] if isinstance(entry, int)]
            links.append((before[-1] if before else None, item, after[0] if after else None))
    return tuple(links)


@dataclass
class Judgement:
    """What one caption got right about its scene (numerators and denominators of the accuracies)."""

    entirely_right: bool
    count_right: bool
    shape: tuple[int, int]  # (right, stated)
    colour: tuple[int, int]
    size: tuple[int, int]
    relation: tuple[int, int]
    background: tuple[int, int]


def judge_caption(text: str, scene: dict[str, Any]) -> Judgement:
    """Check one caption against one scene (definitions in the module docstring)."""
    parsed, objects = parse_caption(text), _scene_objects(scene)
    margin = JUDGE_MARGIN * scene["image_size"]
    assignment = max(_assignments(len(parsed.objects), len(objects)),
                     key=lambda candidate: _score(parsed, objects, candidate, margin), default=())
    matched = [objects[index] if index is not None else None for index in assignment]
    tallies = {}
    for attribute in ("shape", "colour", "size"):
        stated = [(mention, real) for mention, real in zip(parsed.objects, matched) if getattr(mention, attribute)]
        right = sum(real is not None and getattr(mention, attribute) == real[attribute] for mention, real in stated)
        tallies[attribute] = (right, len(stated))
    true_relations = sum(_holds(relation, assignment, objects, margin) for relation in parsed.relations)
    tallies["relation"] = (true_relations, len(parsed.relations))
    if parsed.background is None:
        tallies["background"] = (0, 0)
    else:
        tallies["background"] = (int(parsed.background == scene["background"]), 1)
    count_right = len(parsed.objects) == len(objects) and parsed.count in (None, len(objects))
    entirely_right = count_right and all(right == stated for right, stated in tallies.values())
    return Judgement(entirely_right, count_right, **tallies)


def _scene_objects(scene: dict[str, Any]) -> list[dict[str, Any]]:
    objects = scene.get("objects") if isinstance(scene, dict) else None
    well_formed = isinstance(objects, list) and "image_size" in scene and "background" in scene and all(
        isinstance(item, dict) and all(key in item for key in _OBJECT_KEYS) for item in objects)
    if not well_formed:
        expected = f"{{'image_size', 'background', 'objects': [{{{', '.join(_OBJECT_KEYS)}}}, ...]}}"
        raise ValueError(f"scene: expected {expected} as written by captioner.data.shapes, got {str(scene)[:80]}")
    return objects


def _assignments(mentioned: int, real: int) -> Iterator[tuple[Optional[int], ...]]:
    """Every injective matching of mentions to scene objects, as a tuple of object index or None per mention."""
    if mentioned <= real:
        yield from itertools.permutations(range(real), mentioned)
        return
    for chosen in itertools.permutations(range(mentioned), real):  # chosen[k] = the mention of object k
        assignment: list[Optional[int]] = [None] * mentioned
        for object_index, mention_index in enumerate(chosen):
            assignment[mention_index] = object_index
        yield tuple(assignment)


def _score(parsed: ParsedCaption, objects: list[dict[str, Any]], assignment: tuple, margin: float) -> tuple[int, ...]:
    """(mentions right on every stated attribute, attributes right, relations true) under `assignment`."""
    whole = attributes = 0
    for mention, index in zip(parsed.objects, assignment):
        if index is None:
            continue
        checks = [getattr(mention, name) in (None, objects[index][name]) for name in ("shape", "colour", "size")]
        whole, attributes = whole + all(checks), attributes + sum(checks)
    relations = sum(_holds(relation, assignment, objects, margin) for relation in parsed.relations)
    return whole, attributes, relations


def _holds(relation: tuple, assignment: tuple, objects: list[dict[str, Any]], margin: float) -> bool:
    subject, name, other = relation
    if subject is None or other is None or assignment[subject] is None or assignment[other] is None:
        return False
    if assignment[subject] == assignment[other]:
        return False
    return relation_offset(name, objects[assignment[subject]], objects[assignment[other]]) >= margin


def content_accuracy(captions: list[str], scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentages of captions / mentions / relations that are right (definitions in the module docstring)."""
    if len(captions) != len(scenes):
        raise ValueError(f"content_accuracy: got {len(captions)} captions for {len(scenes)} scenes; expected one each")
    judgements = [judge_caption(caption, scene) for caption, scene in zip(captions, scenes)]
    total = len(judgements)
    result: dict[str, Any] = {
        "content_accuracy": _percent(sum(j.entirely_right for j in judgements), total),
        "count": _percent(sum(j.count_right for j in judgements), total),
    }
    for attribute in ("shape", "colour", "size", "relation", "background"):
        right = sum(getattr(j, attribute)[0] for j in judgements)
        stated = sum(getattr(j, attribute)[1] for j in judgements)
        result[attribute] = _percent(right, stated)
    result["captions"] = total
    result["relations_stated"] = sum(j.relation[1] for j in judgements)
    result["backgrounds_stated"] = sum(j.background[1] for j in judgements)
    return result


def _percent(right: int, total: int) -> Optional[float]:
    return 100.0 * right / total if total else None
