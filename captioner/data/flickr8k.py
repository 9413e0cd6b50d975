"""Flickr8k in either of its two downloads, read into the same ImageRecords.

Flickr8k (Hodosh, Young and Hockenmaier, JAIR 2013): 8,091 photos with 5 captions each.

- Kaggle: `captions.txt`, a CSV `image,caption` with a header (read by folder.read_caption_csv).
- Original: `Flickr8k.token.txt`, lines `image.jpg#N<TAB>caption` with N = 0..4. The original file
  carries captions for `2258277193_586949ec62.jpg.1`, an image that does not exist; they are skipped.

Splits come from the official lists `Flickr_8k.{train,dev,test}Images.txt` (dev -> "val") when any
of them is in the root; images in none of the lists are left out. Without lists, the images are
split at random, seeded (folder.random_split).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from captioner.data.folder import build_splits, random_split, read_caption_csv
from captioner.data.paths import normalized_name
from captioner.data.records import DatasetFormatError, ImageRecord
from captioner.data.text import first_line, read_lines

CSV_NAME = "captions.txt"  # Kaggle
TOKEN_NAME = "Flickr8k.token.txt"  # original
IMAGE_DIRS = ("Images", "Flicker8k_Dataset")  # Kaggle, original (sic: "Flicker")
SPLIT_LISTS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
BOGUS_IMAGES = frozenset({"2258277193_586949ec62.jpg.1"})  # captioned in the token file, no such photo
TOKEN_LINE = re.compile(r"(?P<image>[^\t#]+)#(?P<index>\d+)\t(?P<caption>.*)")


def read_flickr8k(captions_path: Path, images_root: Path, lists_dir: Path | None = None, split_seed: int = 0,
                  val_fraction: float = 0.1, test_fraction: float = 0.1,
                  log: Callable[[str], None] = print) -> dict[str, list[ImageRecord]]:
    """Read captions.txt or Flickr8k.token.txt (told apart by content), then split the images.

    The official split lists are looked for in `lists_dir` (default: the captions file's folder).
    """
    if is_token_file(captions_path):
        captions = read_token_file(captions_path)
    else:
        captions = read_caption_csv(captions_path).captions
    if not captions:
        raise DatasetFormatError(f"{captions_path}: expected captions, found none")
    split_of = read_split_lists(lists_dir or captions_path.parent)
    if split_of:
        left_out = sum(image not in split_of for image in captions)
        if left_out:
            log(f"flickr8k: {left_out} captioned images are in none of the split lists; left out")
    else:
        split_of = random_split(captions, split_seed, val_fraction, test_fraction)
    return build_splits(captions, split_of, lambda image: images_root / image)


def is_token_file(path: Path) -> bool:
    """True for a `*.token.txt` file or one whose first non-blank line is `image#N<TAB>caption` (else: CSV)."""
    if path.name.endswith(".token.txt"):
        return True
    line = first_line(path)
    return line is not None and TOKEN_LINE.fullmatch(line) is not None


def read_token_file(path: Path) -> dict[str, list[str]]:
    """`image.jpg#N<TAB>caption` lines -> image -> captions ordered by N; errors name file:line."""
    numbered: dict[str, dict[int, str]] = {}
    for line_number, line in read_lines(path):
        if not line.strip():
            continue
        match = TOKEN_LINE.fullmatch(line)
        if match is None or not match["caption"].strip():
            raise DatasetFormatError(f"{path}:{line_number}: expected 'image.jpg#N<TAB>caption', got {line[:80]!r}")
        image, index = normalized_name(match["image"].strip(), f"{path}:{line_number}"), int(match["index"])
        if image in BOGUS_IMAGES:
            continue
        if index in numbered.setdefault(image, {}):
            raise DatasetFormatError(f"{path}:{line_number}: caption {image}#{index} appears twice")
        numbered[image][index] = match["caption"].strip()
    return {image: [by_index[i] for i in sorted(by_index)] for image, by_index in numbered.items()}


def read_split_lists(root: Path) -> dict[str, str]:
    """Image -> split from the official lists present in `root` (empty when there are none)."""
    split_of: dict[str, str] = {}
    for split, name in SPLIT_LISTS.items():
        path = root / name
        if not path.is_file():
            continue
        for line_number, line in read_lines(path):
            if not line.strip():
                continue
            image = normalized_name(line.strip(), f"{path}:{line_number}")
            if split_of.setdefault(image, split) != split:
                raise DatasetFormatError(f"{path}:{line_number}: {image} is already in the {split_of[image]} list")
    return split_of
