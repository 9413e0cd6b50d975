"""The one record type that every dataset format is read into.

Whatever the source (the built-in shapes, a Karpathy split JSON, Flickr8k's text files, COCO
annotations or a folder with a CSV), the loaders return `ImageRecord`s grouped by split, so
training, evaluation and the feature cache never look at a file format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image with all of its reference captions."""

    image_id: str  # unique within the dataset (file name, cocoid, ...)
    path: str  # absolute path of the image file
    captions: tuple[str, ...]  # raw reference sentences, as written by the annotators
    split: str  # "train", "val" or "test"
    scene: dict[str, Any] | None = field(default=None, compare=False)  # ground truth (built-in data only)


class DatasetFormatError(ValueError):
    """A dataset file is malformed. The message names the file, the line or JSON path, and what was expected."""
