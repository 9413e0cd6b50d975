"""The built-in synthetic dataset: scenes of 1 to 3 coloured shapes, each with five true captions.

A fresh machine with no internet trains on data it makes itself. `ensure_shapes_dataset` writes
root/images/NNNNN.jpg and root/dataset_shapes.json, a Karpathy-split JSON with the fields of
dataset_flickr8k.json, where every image also carries its ground truth:

    "scene": {"image_size": 64, "background": "white", "objects": [
        {"shape": "circle", "colour": "red", "size": "small", "x": 20.5, "y": 31.0, "radius": 6.2}, ...]}

(x, y) is an object's centre in pixels, y growing downwards; every shape is drawn inside the circle
of that `radius`. Objects never overlap (their circles stay GAP apart) and no two share both shape
and colour, so "the blue square" always names one object. A caption says "A left of B" only when
B's centre lies at least STATE_MARGIN x side to the right of A's (likewise right, above, below), so
every stated relation is plain to see. Captions come from templates with synonyms, optional sizes
and a random order of mention; content.py checks that each one is true.

Deterministic: image i is drawn from random.Random(seed * 1_000_003 + i) (scene and captions) and
numpy's default_rng of the same number (colour jitter and pixel noise), and saved as a JPEG at a fixed
quality with no metadata, so one SyntheticConfig always gives byte-identical files. The JSON is
written last and atomically, stamped with the parameters and GENERATOR_VERSION: a missing JSON (a
killed run), a changed stamp or a missing image means the dataset is generated again.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from captioner.config import ConfigError, SyntheticConfig
from captioner.data.records import SPLITS, DatasetFormatError
from captioner.files import write_atomically
from captioner.vocab import tokenize

GENERATOR_VERSION = 2  # bump whenever scenes, captions or rendering change, so old copies are redone
JSON_NAME = "dataset_shapes.json"
IMAGES_DIR = "images"
CAPTIONS_PER_IMAGE = 5
MAX_WORDS = 18  # longest caption, in words
MIN_IMAGE_SIZE = 32  # below this a small triangle is a few pixels

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {  # name -> RGB; six hues that stay apart after jitter, noise and JPEG
    "red": (220, 30, 30), "orange": (250, 140, 0), "yellow": (235, 215, 0),
    "green": (30, 160, 50), "blue": (30, 70, 220), "purple": (140, 50, 180),
}
BACKGROUNDS = {  # light tints, far from every object colour
    "white": (250, 250, 250), "grey": (195, 195, 195), "beige": (238, 225, 190), "pink": (250, 215, 228)}
RADIUS_RANGES = {"small": (0.1, 0.12), "large": (0.19, 0.22)}  # radius / side: large is about twice small
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_PHRASES = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
STATE_MARGIN = 0.2  # a relation is stated only when the centres differ by this share of the side
GAP = 0.05  # least distance between two objects' circles, as a share of the side
NOISE_STD = 6.0  # Gaussian pixel noise, in 8-bit levels
COLOUR_JITTER = 12  # each object's RGB moves by up to this much per channel
JPEG_QUALITY = 90
SUPERSAMPLE = 4  # draw at 4x the side and average down, so edges are antialiased
_AXES = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}

# Templates: {o0} {o1} {o2} are indefinite noun phrases ("a small red circle"), {r01} the relation of
# object 0 to object 1, {r12} of 1 to 2, {the1} a definite phrase for object 1, {bg} the background.
_TEMPLATES = {
    1: ("{o0}", "{o0} on a {bg} background", "there is {o0}", "there is {o0} on a {bg} background",
        "one {thing}: {o0}", "only one {thing}, {o0}", "{o0} alone on a {bg} background", "a picture of {o0}"),
    2: ("{o0} and {o1}", "two {things}: {o0} and {o1}", "there are two {things}, {o0} and {o1}",
        "{o0} and {o1} on a {bg} background", "{o0} with {o1}", "a picture of {o0} and {o1}",
        "{o0} {r01} {o1}", "{o0} is {r01} {o1}", "there is {o0} {r01} {o1}", "two {things}: {o0} {r01} {o1}",
        "{o0} {r01} {o1} on a {bg} background"),
    3: ("{o0}, {o1} and {o2}", "three {things}: {o0}, {o1} and {o2}", "there are three {things}: {o0}, {o1} and {o2}",
        "{o0}, {o1} and {o2} on a {bg} background", "a picture of {o0}, {o1} and {o2}",
        "{o0} {r01} {o1}, and {o2}", "three {things}: {o2}, and {o0} {r01} {o1}",
        "there is {o0} {r01} {o1}, and also {o2}",
        "{o0} {r01} {o1}, and {the1} is {r12} {o2}"),
}


def relation_offset(relation: str, subject: dict[str, Any], other: dict[str, Any]) -> float:
    """Pixels by which `subject`'s centre lies in direction `relation` from `other`'s (negative: the other way)."""
    axis, sign = _AXES[relation]
    return sign * (subject[axis] - other[axis])


def stated_relations(subject: dict[str, Any], other: dict[str, Any], image_size: int) -> list[str]:
    """The relations of `subject` to `other` clear enough for a reference caption to state."""
    return [name for name in _AXES if relation_offset(name, subject, other) >= STATE_MARGIN * image_size]


def sample_scene(rng: random.Random, image_size: int) -> dict[str, Any]:
    """A background and 1-3 non-overlapping objects with distinct (shape, colour) pairs."""
    count = rng.choice((1, 2, 3))
    background = rng.choice(tuple(BACKGROUNDS))
    kinds = [(shape, colour) for shape in SHAPES for colour in COLOURS]
    while True:  # a draw that does not fit (e.g. three large objects) is drawn again
        objects = []
        for shape, colour in rng.sample(kinds, count):
            size = rng.choice(("small", "large"))
            radius = round(rng.uniform(*RADIUS_RANGES[size]) * image_size, 1)
            objects.append({"shape": shape, "colour": colour, "size": size, "x": 0.0, "y": 0.0, "radius": radius})
        if _place(objects, rng, image_size):
            return {"image_size": image_size, "background": background, "objects": objects}


def _place(objects: list[dict[str, Any]], rng: random.Random, image_size: int, tries: int = 100) -> bool:
    """Give each object a centre inside the image and clear of the others; False if one finds no room."""
    for index, item in enumerate(objects):
        low, high = item["radius"] + 1, image_size - item["radius"] - 1
        for _ in range(tries):
            x, y = round(rng.uniform(low, high), 1), round(rng.uniform(low, high), 1)
            clear = [math.dist((x, y), (other["x"], other["y"])) >= item["radius"] + other["radius"] + GAP * image_size
                     for other in objects[:index]]
            if all(clear):
                item["x"], item["y"] = x, y
                break
        else:
            return False
    return True


def scene_captions(scene: dict[str, Any], rng: random.Random, count: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """`count` different true captions: the plain one first, then one per template while templates last.

    Like human annotators, who often converge on one plain description and vary the rest, every image
    has the plain caption (`plain_caption`) among its references; the others vary template, synonyms,
    order of mention and detail."""
    objects = scene["objects"]
    usable = [(template, order) for template in _TEMPLATES[len(objects)]
              if (order := _order_for(template, objects, rng, scene["image_size"])) is not None]
    rng.shuffle(usable)
    captions: list[str] = [plain_caption(scene)]
    for attempt in range(20 * count):
        template, order = usable[attempt % len(usable)]
        caption = _fill(template, [objects[index] for index in order], scene, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            return captions
    raise RuntimeError(f"shapes: could not write {count} different captions for scene {scene}")


def plain_caption(scene: dict[str, Any]) -> str:
    """Every object with size, colour and shape, left to right; two objects also get their clearest
    relation ("a small red circle to the left of a large blue square")."""
    objects = sorted(scene["objects"], key=lambda item: item["x"])
    phrases = [_noun_phrase(item, None, plain=True, with_size=True) for item in objects]
    if len(objects) == 1:
        return phrases[0]
    if len(objects) == 3:
        return f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    relations = stated_relations(objects[0], objects[1], scene["image_size"])
    if "left" in relations:
        return f"{phrases[0]} {RELATION_PHRASES['left'][0]} {phrases[1]}"
    top, bottom = sorted(range(2), key=lambda index: objects[index]["y"])
    if "above" in stated_relations(objects[top], objects[bottom], scene["image_size"]):
        return f"{phrases[top]} {RELATION_PHRASES['above'][0]} {phrases[bottom]}"
    return f"{phrases[0]} and {phrases[1]}"


def _order_for(template: str, objects: list[dict[str, Any]], rng: random.Random, side: int) -> tuple[int, ...] | None:
    """A random order of mention that gives the template's relations something true to say, or None."""
    orders = list(itertools.permutations(range(len(objects))))
    rng.shuffle(orders)
    for order in orders:
        first_pair = "{r01}" not in template or stated_relations(objects[order[0]], objects[order[1]], side)
        second_pair = "{r12}" not in template or stated_relations(objects[order[1]], objects[order[2]], side)
        if first_pair and second_pair:
            return order
    return None


def _fill(template: str, ordered: list[dict[str, Any]], scene: dict[str, Any], rng: random.Random) -> str:
    """The template with random wording; the plainest wording when the random one is too long."""
    for attempt in range(10):
        plain = attempt == 9
        fields = {f"o{index}": _noun_phrase(item, rng, plain) for index, item in enumerate(ordered)}
        side = scene["image_size"]
        if "{r01}" in template:
            fields["r01"] = _relation_phrase(ordered[0], ordered[1], side, rng, plain)
        if "{r12}" in template:
            fields["r12"] = _relation_phrase(ordered[1], ordered[2], side, rng, plain)
            fields["the1"] = _definite_phrase(ordered[1], scene["objects"], rng)
        noun = rng.choice(("shape", "object"))
        caption = template.format(bg=scene["background"], thing=noun, things=noun + "s", **fields)
        if len(tokenize(caption)) <= MAX_WORDS:
            return caption
    raise RuntimeError(f"shapes: template {template!r} gives captions over {MAX_WORDS} words")


def _noun_phrase(item: dict[str, Any], rng: random.Random | None, plain: bool, with_size: bool | None = None) -> str:
    """'a small red circle', 'one blue square', 'an orange triangle' (size said 60% of the time)."""
    if with_size is None:
        with_size = not plain and rng.random() < 0.6
    size_word = SIZE_WORDS[item["size"]][0] if plain else rng.choice(SIZE_WORDS[item["size"]])
    words = ([size_word] if with_size else []) + [item["colour"], item["shape"]]
    article = "one" if not plain and rng.random() < 0.15 else ("an" if words[0][0] in "aeiou" else "a")
    return " ".join([article] + words)


def _relation_phrase(subject: dict[str, Any], other: dict[str, Any], side: int, rng: random.Random, plain: bool) -> str:
    relation = rng.choice(stated_relations(subject, other, side))
    phrases = RELATION_PHRASES[relation]
    return min(phrases, key=len) if plain else rng.choice(phrases)


def _definite_phrase(item: dict[str, Any], objects: list[dict[str, Any]], rng: random.Random) -> str:
    """'the square' when the shape alone is unique in the scene (sometimes), else 'the blue square'."""
    unique_shape = sum(other["shape"] == item["shape"] for other in objects) == 1
    if unique_shape and rng.random() < 0.5:
        return f"the {item['shape']}"
    return f"the {item['colour']} {item['shape']}"


def render_scene(scene: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    """Draw the scene at SUPERSAMPLE x size, average down, then add colour jitter and pixel noise."""
    side, scale = scene["image_size"], SUPERSAMPLE
    canvas = Image.new("RGB", (side * scale, side * scale), _jitter(BACKGROUNDS[scene["background"]], 4, rng))
    draw = ImageDraw.Draw(canvas)
    for item in scene["objects"]:
        x, y, r = item["x"] * scale, item["y"] * scale, item["radius"] * scale
        fill = _jitter(COLOURS[item["colour"]], COLOUR_JITTER, rng)
        if item["shape"] == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif item["shape"] == "square":
            half = r / math.sqrt(2)  # corners on the circle
            draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
        elif item["shape"] == "triangle":
            angles = [math.radians(degrees) for degrees in (-90, 30, 150)]  # pointing up, centroid at the centre
            draw.polygon([(x + r * math.cos(angle), y + r * math.sin(angle)) for angle in angles], fill=fill)
        else:  # diamond: taller than wide, so it never looks like a tilted square
            draw.polygon([(x, y - r), (x + 0.65 * r, y), (x, y + r), (x - 0.65 * r, y)], fill=fill)
    image = canvas.resize((side, side), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, NOISE_STD, size=(side, side, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _jitter(colour: tuple[int, int, int], amount: int, rng: np.random.Generator) -> tuple[int, ...]:
    offsets = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(min(255, max(0, channel + offset))) for channel, offset in zip(colour, offsets))


def ensure_shapes_dataset(root: Path, config: SyntheticConfig) -> Path:
    """Generate the dataset under `root` unless the same one is already complete there; return the JSON path."""
    _check_config(config)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetFormatError(f"{root}: expected a directory for the shapes dataset, found a file")
    json_path = root / JSON_NAME
    stamp = generator_stamp(config)
    if not _is_complete(json_path, stamp):
        _generate(root, config, stamp)
    return json_path


def generator_stamp(config: SyntheticConfig) -> dict[str, int]:
    """What the files depend on; a dataset with another stamp is generated again."""
    return {"version": GENERATOR_VERSION, "num_train": config.num_train, "num_val": config.num_val,
            "num_test": config.num_test, "image_size": config.image_size, "seed": config.seed}


def _check_config(config: SyntheticConfig) -> None:
    lowest = {"num_train": 1, "num_val": 0, "num_test": 0, "image_size": MIN_IMAGE_SIZE, "seed": 0}
    for name, low in lowest.items():
        value = getattr(config, name)
        if type(value) is not int or value < low:
            raise ConfigError(f"data.synthetic.{name}: expected an integer >= {low}, got {value!r}")


def _is_complete(json_path: Path, stamp: dict[str, int]) -> bool:
    try:
        dataset = json.loads(json_path.read_text())
        images = dataset["images"]
        if dataset["generator"] != stamp or len(images) != stamp["num_train"] + stamp["num_val"] + stamp["num_test"]:
            return False
        return all((json_path.parent / IMAGES_DIR / entry["filename"]).is_file() for entry in images)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False


def _generate(root: Path, config: SyntheticConfig, stamp: dict[str, int]) -> None:
    images_dir = root / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    (root / JSON_NAME).unlink(missing_ok=True)  # no JSON until every image is written: a killed run is redone
    counts = (config.num_train, config.num_val, config.num_test)
    splits = [split for split, count in zip(SPLITS, counts) for _ in range(count)]
    entries = [_make_image(index, split, config, images_dir) for index, split in enumerate(splits)]
    for path in images_dir.glob("*.jpg"):  # images left over from an earlier, larger dataset
        if re.fullmatch(r"\d{5,}\.jpg", path.name) and int(path.stem) >= len(entries):
            path.unlink()
    dataset = {"dataset": "shapes", "generator": stamp, "images": entries}
    write_atomically(root / JSON_NAME, json.dumps(dataset).encode())


def _make_image(index: int, split: str, config: SyntheticConfig, images_dir: Path) -> dict[str, Any]:
    """Draw, caption and save image `index`; return its Karpathy-format entry."""
    seed = config.seed * 1_000_003 + index
    rng = random.Random(seed)
    scene = sample_scene(rng, config.image_size)
    captions = scene_captions(scene, rng)
    filename = f"{index:05d}.jpg"
    render_scene(scene, np.random.default_rng(seed)).save(
        images_dir / filename, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    sentids = [index * CAPTIONS_PER_IMAGE + number for number in range(len(captions))]
    sentences = [{"tokens": tokenize(caption), "raw": caption, "imgid": index, "sentid": sentid}
                 for caption, sentid in zip(captions, sentids)]
    return {"filename": filename, "filepath": IMAGES_DIR, "split": split, "imgid": index,
            "sentids": sentids, "sentences": sentences, "scene": scene}
