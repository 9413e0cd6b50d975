"""Image paths written in a dataset: kept inside its image folder, and one file listed once.

A downloaded dataset is not trusted. An absolute path or `..` in a Karpathy `filename`, a COCO
`file_name` or a CSV row would make training read any image the user can read, so each written
name must be a relative path that stays inside the image folder (`normalized_name`).

Two entries may name one file in different words (`./a.jpg` and `a.jpg`, a symbolic or hard link, two
COCO ids with one `file_name`). Such a photo in train and test would put test images into training,
so duplicates are compared as files on disk, not as strings (`check_distinct_files`), and refused.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from captioner.data.records import DatasetFormatError, ImageRecord


def normalized_name(written: str, where: str) -> str:
    """`written` as a plain relative path (`./a//b.jpg` -> `a/b.jpg`); refused when it is empty,
    absolute or leaves its folder through `..`. `where` names the file and line or entry."""
    parts = [part for part in PurePosixPath(written).parts if part != "."]
    if not parts or written.startswith("/") or ".." in parts or "\0" in written:
        raise DatasetFormatError(f"{where}: image path {written[:80]!r} is not inside the dataset's image "
                                 "folder; expected a relative path without '..'")
    return "/".join(parts)


def check_distinct_files(splits: dict[str, list[ImageRecord]], where: str | Path) -> None:
    """Refuse two records that are one file on disk (same device and inode, or same resolved path)."""
    seen: dict[object, ImageRecord] = {}
    for records in splits.values():
        for record in records:
            first = seen.setdefault(_identity(record.path), record)
            if first is not record:
                leak = " (test or val images would be trained on)" if first.split != record.split else ""
                raise DatasetFormatError(
                    f"{where}: images {first.image_id!r} ({first.split}) and {record.image_id!r} ({record.split}) "
                    f"are the same file, {record.path}{leak}; list each photo once")


def shown_path(path: str, root: str | Path) -> str:
    """`path` relative to the dataset root when it lies inside it (what metrics.json records)."""
    root = Path(root).expanduser().resolve()
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path


def _identity(path: str) -> object:
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path)  # missing: validate.py reports it
    return status.st_dev, status.st_ino
