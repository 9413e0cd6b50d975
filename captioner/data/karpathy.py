"""Karpathy's split JSON (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json).

The standard splits of Karpathy and Fei-Fei, "Deep Visual-Semantic Alignments for Generating Image
Descriptions" (CVPR 2015), also used for the built-in shapes data:

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895,
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A man riding ...", "tokens": ["a", "man", ...]}, ...]}, ...]}

Image path = images_root/[filepath/]filename (Flickr entries have no filepath), refused when it leaves
images_root (paths.py); two entries naming one image are refused. image_id = cocoid when present, else
the filename. COCO's "restval" (val2014 images outside Karpathy's 5k val and 5k test) joins train when
`use_restval`, else it is dropped. A "scene" entry (shapes) is kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from captioner.data.paths import normalized_name
from captioner.data.records import SPLITS, DatasetFormatError, ImageRecord
from captioner.data.text import read_json

SPLIT_VALUES = SPLITS + ("restval",)
SAMPLE_SIZE = 200  # entries looked up in each candidate image folder to choose one


def read_karpathy(json_path: Path, images_roots: Path | Sequence[Path],
                  use_restval: bool = True) -> dict[str, list[ImageRecord]]:
    """Read the JSON into records per split. Errors name the file and the JSON path.

    With several `images_roots`, the one that holds the most of a sample of the images is used
    (Flickr keeps images in Images/ or Flicker8k_Dataset/, COCO's filepath already names train2014/).
    """
    entries = _load_entries(json_path)
    relative_paths = [_relative_path(json_path, index, entry) for index, entry in enumerate(entries)]
    images_root = _pick_root(json_path, images_roots, relative_paths)
    splits: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    first_index: dict[str, int] = {}  # image path or id -> index of the entry that used it
    for index, (entry, relative) in enumerate(zip(entries, relative_paths)):
        image_id = str(entry["cocoid"]) if "cocoid" in entry else entry["filename"]
        for key in (relative, f"id {image_id}"):
            if first_index.setdefault(key, index) != index:
                raise DatasetFormatError(
                    f"{json_path}: images[{index}]: duplicate image {key!r} (also images[{first_index[key]}])")
        split = _split(json_path, index, entry, use_restval)
        captions = _captions(json_path, index, entry)
        if split is not None:
            path = str(images_root / relative)
            splits[split].append(ImageRecord(image_id, path, captions, split, entry.get("scene")))
    return splits


def _load_entries(json_path: Path) -> list[dict[str, Any]]:
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{json_path}: expected an object with an 'images' list at the top level")
    for index, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise DatasetFormatError(f"{json_path}: images[{index}]: expected an object, got {entry!r:.60}")
    return data["images"]


def _relative_path(json_path: Path, index: int, entry: dict[str, Any]) -> str:
    filename, filepath = entry.get("filename"), entry.get("filepath", "")
    if not isinstance(filename, str) or not filename.strip():
        raise DatasetFormatError(f"{json_path}: images[{index}].filename: expected a file name, got {filename!r}")
    if not isinstance(filepath, str):
        raise DatasetFormatError(f"{json_path}: images[{index}].filepath: expected a folder name, got {filepath!r}")
    return normalized_name(f"{filepath}/{filename}" if filepath else filename, f"{json_path}: images[{index}]")


def _pick_root(json_path: Path, images_roots: Path | Sequence[Path], relative_paths: list[str]) -> Path:
    """The candidate folder that holds the most of up to SAMPLE_SIZE images spread over the file (one
    missing image must not send the reader to the wrong folder); an error when none holds any."""
    roots = [images_roots] if isinstance(images_roots, Path) else list(images_roots)
    if len(roots) == 1 or not relative_paths:
        return roots[0]
    sample = relative_paths[:: max(1, len(relative_paths) // SAMPLE_SIZE)][:SAMPLE_SIZE]
    found = [sum((root / relative).is_file() for relative in sample) for root in roots]
    if max(found) == 0:
        raise DatasetFormatError(f"{json_path}: none of {len(sample)} of its images (e.g. {sample[0]}) is in any "
                                 f"of {', '.join(str(root) for root in roots)}; set data.images_dir")
    return roots[found.index(max(found))]


def _split(json_path: Path, index: int, entry: dict[str, Any], use_restval: bool) -> str | None:
    split = entry.get("split")
    if split not in SPLIT_VALUES:
        raise DatasetFormatError(
            f"{json_path}: images[{index}].split: expected one of {', '.join(SPLIT_VALUES)}, got {split!r}")
    if split == "restval":
        return "train" if use_restval else None
    return split


def _captions(json_path: Path, index: int, entry: dict[str, Any]) -> tuple[str, ...]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise DatasetFormatError(f"{json_path}: images[{index}].sentences: expected a non-empty list")
    captions = []
    for number, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
        if isinstance(raw, str) and raw.strip():
            captions.append(raw.strip())
        elif isinstance(tokens, list) and tokens and all(isinstance(token, str) for token in tokens):
            captions.append(" ".join(tokens))
        else:
            raise DatasetFormatError(
                f"{json_path}: images[{index}].sentences[{number}]: expected 'raw' or 'tokens'")
    return tuple(captions)
