"""Check, before training, that every image of a dataset exists and decodes as training will decode it.

Real downloads lose a few files (an interrupted unzip, a renamed folder) and hold a few odd ones (a
truncated JPEG, a format outside the allowlist, a 21:1 strip, a 49-megapixel scan). Each image goes
through `captioner.images.load_image`, the loader training, evaluation and the demo use, so whatever it
refuses is found here, not mid-epoch or in the test evaluation after the last epoch. A few bad images
are skipped with ONE summary warning naming their full paths; more than `max_bad_fraction` of them
aborts with the count and examples, so a wrong `data.root` or `data.images_dir` fails at once.
Decoding runs on a thread pool: PIL decodes with the GIL released.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from captioner.data.records import DatasetFormatError, ImageRecord
from captioner.images import ImageError, load_image

NUM_EXAMPLES = 5  # bad images named in the warning or error
MAX_THREADS = 8  # decodes in flight (at most one per core)
MIN_IMAGES_FOR_THREADS = 64  # below this, one thread is faster


def check_image(path: str) -> str | None:
    """None when the file exists and `load_image` decodes it, else the reason."""
    if not os.path.isfile(path):
        return "missing"
    try:
        load_image(path, name=path)
    except ImageError as error:
        return str(error).removeprefix(f"{path}: ")
    return None


def check_images(paths: list[str]) -> dict[str, str | None]:
    """Path -> reason it cannot be used (None when it can), on as many threads as help."""
    threads = min(MAX_THREADS, os.cpu_count() or 1)
    if len(paths) < MIN_IMAGES_FOR_THREADS or threads == 1:
        return {path: check_image(path) for path in paths}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(paths, pool.map(check_image, paths, chunksize=16)))


def validate_images(splits: dict[str, list[ImageRecord]], max_bad_fraction: float,
                    log: Callable[[str], None] = print) -> dict[str, list[ImageRecord]]:
    """The splits without missing or unusable images; raises when their share exceeds max_bad_fraction."""
    paths = sorted({record.path for records in splits.values() for record in records})
    if not paths:
        return splits
    reasons = check_images(paths)
    bad = {path: reason for path, reason in reasons.items() if reason is not None}
    if not bad:
        return splits
    share = len(bad) / len(paths)
    examples = ", ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:NUM_EXAMPLES])
    more = f" and {len(bad) - NUM_EXAMPLES} more" if len(bad) > NUM_EXAMPLES else ""
    summary = f"{len(bad)} of {len(paths)} images ({share:.1%}) are missing or unusable: {examples}{more}"
    if share > max_bad_fraction:
        raise DatasetFormatError(
            f"{summary}; that is more than data.max_bad_images={max_bad_fraction:.1%}; "
            "check data.root and data.images_dir")
    log(f"warning: skipping {summary} (within data.max_bad_images={max_bad_fraction:.1%})")
    return {split: [record for record in records if record.path not in bad] for split, records in splits.items()}
