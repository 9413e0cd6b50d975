"""MS-COCO 2014 captions from the official annotation files (Lin et al., "Microsoft COCO", ECCV 2014).

    root/annotations/captions_train2014.json   {"images": [{"id", "file_name"}, ...],
    root/annotations/captions_val2014.json      "annotations": [{"image_id", "caption"}, ...]}
    root/train2014/*.jpg   root/val2014/*.jpg

Each `file_name` must stay inside its image folder (paths.py) and belong to one id only.
train2014 -> "train". COCO publishes no test captions, so val2014 is split in two, seeded: its sorted
image ids are shuffled with `split_seed` and a share test_fraction / (val_fraction + test_fraction) of
them (half, with the defaults) becomes "test", the rest "val". This is NOT Karpathy's standard split
(5k val, 5k test, the rest "restval" for training); for numbers comparable with papers, use
dataset_coco.json with the "karpathy" format instead.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from captioner.data.paths import normalized_name
from captioner.data.records import SPLITS, DatasetFormatError, ImageRecord
from captioner.data.text import read_json

ANNOTATIONS_DIR = "annotations"
SUBSETS = (("captions_train2014.json", "train2014"), ("captions_val2014.json", "val2014"))


def read_coco(annotations_dir: Path, images_root: Path, split_seed: int = 0, val_fraction: float = 0.1,
              test_fraction: float = 0.1, log: Callable[[str], None] = print) -> dict[str, list[ImageRecord]]:
    """Read both annotation files; train2014 -> train, val2014 -> val and test (seeded)."""
    subsets = []
    for file_name, folder in SUBSETS:
        path = annotations_dir / file_name
        if not path.is_file():
            raise DatasetFormatError(f"{path}: COCO annotation file not found")
        subsets.append(_read_subset(path, images_root / folder, log))
    train, val = subsets
    shared = set(train) & set(val)
    if shared:
        raise DatasetFormatError(f"{annotations_dir}: image id {min(shared)} is in both train2014 and val2014")
    split_of = {image_id: "train" for image_id in train} | _split_val(val, split_seed, val_fraction, test_fraction)
    splits: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for image_id, (path, captions) in (train | val).items():  # annotation-file order
        splits[split_of[image_id]].append(ImageRecord(image_id, path, captions, split_of[image_id]))
    return splits


def _read_subset(path: Path, image_dir: Path, log: Callable[[str], None]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """image id -> (image path, captions) for the images with at least one caption."""
    data = _load_json(path)
    file_names: dict[int, str] = {}
    first_id: dict[str, int] = {}  # file name -> the first id that names it
    for index, image in enumerate(data["images"]):
        image_id = _field(path, f"images[{index}]", image, "id", int)
        if image_id in file_names:
            raise DatasetFormatError(f"{path}: images[{index}].id: duplicate id {image_id}")
        where = f"{path}: images[{index}].file_name"
        file_name = normalized_name(_field(path, f"images[{index}]", image, "file_name", str), where)
        if first_id.setdefault(file_name, image_id) != image_id:
            raise DatasetFormatError(
                f"{where}: {file_name} is also image id {first_id[file_name]}; list each photo once")
        file_names[image_id] = file_name
    captions: dict[int, list[str]] = {image_id: [] for image_id in file_names}
    for index, annotation in enumerate(data["annotations"]):
        image_id = _field(path, f"annotations[{index}]", annotation, "image_id", int)
        caption = _field(path, f"annotations[{index}]", annotation, "caption", str).strip()
        if image_id not in captions:
            raise DatasetFormatError(f"{path}: annotations[{index}].image_id: {image_id} is not in images[]")
        if not caption:
            raise DatasetFormatError(f"{path}: annotations[{index}].caption: expected a non-empty caption")
        captions[image_id].append(caption)
    uncaptioned = sum(not texts for texts in captions.values())
    if uncaptioned:
        log(f"coco: {uncaptioned} images in {path.name} have no caption; left out")
    return {str(image_id): (str(image_dir / file_names[image_id]), tuple(texts))
            for image_id, texts in captions.items() if texts}


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetFormatError(f"{path}: expected an object with an '{key}' list at the top level")
    return data


def _field(path: Path, where: str, item: Any, key: str, kind: type) -> Any:
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetFormatError(f"{path}: {where}.{key}: expected {kind.__name__}, got {value!r:.60}")
    return value


def _split_val(val: dict[str, Any], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """val2014 image id -> "val" | "test": sorted ids, shuffled with `seed`, the first share to test."""
    total = val_fraction + test_fraction
    test_share = test_fraction / total if total > 0 else 0.5
    ids = sorted(val, key=int)
    random.Random(seed).shuffle(ids)
    num_test = round(len(ids) * test_share)
    return {image_id: ("test" if position < num_test else "val") for position, image_id in enumerate(ids)}
