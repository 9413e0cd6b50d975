"""Regenerate the demo's example images in this directory (they are committed; run this only to remake them).

    python examples/images/make_examples.py

Three scenes come from the built-in shapes generator (captioner/data/shapes.py), with seeds the
default dataset does not use for its first images, at the 64 x 64 size the shapes model was trained on.
Four photos come from scikit-image's bundled sample data (public domain or CC0; see README.md),
shrunk to at most 320 px and saved as JPEGs under 60 KB.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from captioner.data.shapes import render_scene, sample_scene  # noqa: E402

SCENE_SEEDS = (101, 202, 303)  # three, two and one object(s) with generator version 1
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # skimage.data function names
PHOTO_SIDE = 320  # longest side of a saved photo, in pixels
MAX_BYTES = 60_000


def make_scenes(image_size: int = 64) -> None:
    for seed in SCENE_SEEDS:
        scene = sample_scene(random.Random(seed), image_size)
        image = render_scene(scene, np.random.default_rng(seed))
        image.save(HERE / f"shapes_{seed}.jpg", format="JPEG", quality=90)


def make_photos() -> None:
    from skimage import data

    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        path = HERE / f"photo_{name}.jpg"
        for quality in (85, 75, 65, 55):  # the first quality that fits under MAX_BYTES
            image.save(path, format="JPEG", quality=quality, optimize=True)
            if path.stat().st_size < MAX_BYTES:
                break


if __name__ == "__main__":
    make_scenes()
    make_photos()
    for path in sorted(HERE.glob("*.jpg")):
        print(f"{path.name}: {path.stat().st_size / 1000:.1f} KB")
