"""The user's own folder: images plus a CSV `image,caption[,split]`, and the seeded random split.

    captions.csv                 images/
    image,caption,split          dog.jpg
    dog.jpg,A dog runs .,train   cats/two.jpg
    dog.jpg,"A brown dog, running",train
    cats/two.jpg,Two cats sleep .,val

One row per caption (several rows per image). `image` is a path relative to the images folder.
The `split` column (train | val | test) is optional; without it the images are split at random,
seeded, by `random_split`. Kaggle's Flickr8k `captions.txt` is the same CSV without the split
column, so flickr8k.py reads it with `read_caption_csv` too.

The CSV is read with the csv module, one line per row: quoted commas, doubled quotes, a UTF-8 BOM, CRLF
line ends and blank lines parse; a quote left open (a field running over lines) is refused, naming the line.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from captioner.config import ConfigError
from captioner.data.paths import normalized_name
from captioner.data.records import SPLITS, DatasetFormatError, ImageRecord
from captioner.data.text import read_lines

REQUIRED_COLUMNS = ("image", "caption")
OPTIONAL_COLUMNS = ("split",)


@dataclass
class CaptionTable:
    """Captions per image, in order of first appearance, and the split named per image (if any)."""

    captions: dict[str, list[str]] = field(default_factory=dict)  # image name -> its captions
    splits: dict[str, str] = field(default_factory=dict)  # image name -> split, from a `split` column


def read_caption_csv(path: Path) -> CaptionTable:
    """Read an `image,caption[,split]` CSV with a header row; errors name file:line.

    Each line is one row: a quoted field never runs on to the next line. A caption is one line, so a
    quote left open is a typo, and reading on would swallow every line after it into one caption.
    """
    table = CaptionTable()
    lines = read_lines(path)
    header = next(((number, line) for number, line in lines if line.strip()), None)
    columns = _check_header(path, _parse_row(path, *header) if header else None)
    for number, line in lines:
        if line.strip():
            row = _parse_row(path, number, line)
            if any(cell.strip() for cell in row):  # a line of bare commas is blank too
                _add_row(path, number, row, columns, table)
    return table


def _parse_row(path: Path, number: int, line: str) -> list[str]:
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error as error:
        reason = "a quote is opened and never closed" if "end of data" in str(error) else str(error)
        raise DatasetFormatError(f"{path}:{number}: {reason} (a quoted field ends on its own line), "
                                 f"got {line[:80]!r}") from None


def _check_header(path: Path, header: list[str] | None) -> dict[str, int]:
    """Column name -> index; the header must name image and caption (split optional)."""
    names = [cell.strip().lower() for cell in header or []]
    unknown = [name for name in names if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if any(name not in names for name in REQUIRED_COLUMNS) or unknown or len(set(names)) != len(names):
        shown = ",".join(header) if header else "an empty file"
        raise DatasetFormatError(
            f"{path}:1: expected the header 'image,caption' (optionally ',split'), got {shown[:80]!r}")
    return {name: names.index(name) for name in names}


def _add_row(path: Path, line: int, row: list[str], columns: dict[str, int], table: CaptionTable) -> None:
    if len(row) != len(columns):
        raise DatasetFormatError(
            f"{path}:{line}: expected {len(columns)} fields ({','.join(columns)}), got {len(row)}: {row!r:.80}")
    image, caption = row[columns["image"]].strip(), row[columns["caption"]].strip()
    if not image or not caption:
        raise DatasetFormatError(f"{path}:{line}: expected a non-empty image and caption, got {row!r:.80}")
    image = normalized_name(image, f"{path}:{line}")
    table.captions.setdefault(image, []).append(caption)
    if "split" in columns:
        split = row[columns["split"]].strip().lower()
        if split not in SPLITS:
            raise DatasetFormatError(f"{path}:{line}: split: expected one of {', '.join(SPLITS)}, got {split!r}")
        if table.splits.setdefault(image, split) != split:
            raise DatasetFormatError(
                f"{path}:{line}: image {image!r} is in split {split!r} here but {table.splits[image]!r} earlier")


def random_split(image_ids: Iterable[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Image id -> split: sorted ids shuffled with `seed`; the first test_fraction go to test, then val.

    Sorting first makes the split independent of file order; the same seed and ids give the same split.
    A fraction above zero always gets at least one image, so small datasets still have a val split.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: "
            "expected fractions >= 0 that sum to less than 1")
    ids = sorted(set(image_ids))
    random.Random(seed).shuffle(ids)
    num_test = _share(len(ids), test_fraction)
    num_val = _share(len(ids), val_fraction)
    if ids and num_test + num_val >= len(ids):
        raise DatasetFormatError(f"only {len(ids)} images: too few to split into train, val and test")
    split_of = {image_id: "test" for image_id in ids[:num_test]}
    split_of.update({image_id: "val" for image_id in ids[num_test:num_test + num_val]})
    split_of.update({image_id: "train" for image_id in ids[num_test + num_val:]})
    return split_of


def _share(count: int, fraction: float) -> int:
    return max(1, round(count * fraction)) if fraction > 0 and count else 0


def build_splits(captions: dict[str, list[str]], split_of: dict[str, str],
                 path_of: Callable[[str], Path]) -> dict[str, list[ImageRecord]]:
    """Group captioned images into ImageRecords per split; images without a split are left out."""
    splits: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for image_id, image_captions in captions.items():
        split = split_of.get(image_id)
        if split is not None:
            record = ImageRecord(image_id, str(path_of(image_id)), tuple(image_captions), split)
            splits[split].append(record)
    return splits


def read_folder(csv_path: Path, images_root: Path, split_seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> dict[str, list[ImageRecord]]:
    """The folder format: the CSV's split column if it has one, else a seeded random split."""
    table = read_caption_csv(csv_path)
    if not table.captions:
        raise DatasetFormatError(f"{csv_path}: expected at least one 'image,caption' row after the header")
    split_of = table.splits or random_split(table.captions, split_seed, val_fraction, test_fraction)
    return build_splits(table.captions, split_of, lambda image: images_root / image)
