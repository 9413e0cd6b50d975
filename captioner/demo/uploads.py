"""What the demo does with uploaded files: decode them one at a time within a pixel budget per
request, and keep Gradio's upload cache under a total size as well as an age.

A small file can declare 40 megapixels (160 MB of RGBA once decoded). `read_batch` therefore turns
each upload into the encoder's input and a thumbnail and lets go of the full-size image before it
reads the next one, so a batch holds one decoded image at a time, never sixteen. The pixels the
headers declare count against `MAX_REQUEST_PIXELS`: uploads past it are skipped, each named, which
also bounds the decoding time a single request can take.

Gradio removes uploads older than an age on a schedule (`delete_cache`), but a burst of large
uploads would fill the disk in between: `bound_upload_cache` replaces the app's record of uploaded
files with `BoundedUploads`, which deletes the oldest files as soon as all of them together pass a
number of bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from captioner.demo.service import DemoInputError
from captioner.images import ImageError, load_image, read_size
from captioner.model import Captioner

MAX_BATCH_IMAGES = 16  # images per batch request; more is refused with a clear message
MAX_REQUEST_PIXELS = 200_000_000  # declared pixels decoded per request: sixteen 12 MP photos, five 40 MP images
THUMBNAIL_SIDE = 256  # the gallery's pictures, in pixels


@dataclass
class Batch:
    """A batch of uploads, read: what the model and the gallery need, and what was skipped."""

    pixels: torch.Tensor  # (B, 3, S, S) uint8, the encoder's input
    thumbnails: list[Image.Image]  # at most THUMBNAIL_SIDE on a side, one per captioned upload
    names: list[str]  # the uploads' file names, without the cache's folders
    skipped: list[str]  # one line per upload that was not read, naming it


def read_upload(path: str | Path | None) -> Image.Image:
    """An uploaded file through the shared loader; errors name the file, not where it is stored."""
    if not path:
        raise DemoInputError("Please upload an image first.")
    return load_image(path, name=Path(path).name)


def read_batch(model: Captioner, paths: list[str]) -> Batch:
    """Read uploads one at a time into `model`'s input and a thumbnail; one bad file or one past the
    pixel budget is skipped and named, and a batch with no readable image is refused."""
    if not paths:
        raise DemoInputError("Please upload one or more images first.")
    if len(paths) > MAX_BATCH_IMAGES:
        raise DemoInputError(f"{len(paths)} files: at most {MAX_BATCH_IMAGES} images per batch")
    pixels, thumbnails, names, skipped = [], [], [], []
    budget = MAX_REQUEST_PIXELS
    for path in paths:
        name = Path(path).name
        try:
            width, height = read_size(path, name=name)
            if width * height > budget:
                skipped.append(f"{name}: past this request's budget of {MAX_REQUEST_PIXELS / 1e6:g} megapixels "
                               "for all its images; send it in another batch")
                continue
            budget -= width * height
            image = read_upload(path)
        except ImageError as error:
            skipped.append(str(error))
            continue
        pixels.append(model.pixels([image]))  # (1, 3, S, S)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # in place: the full-size pixels are freed here
        thumbnails.append(image)
        names.append(name)
    if not names:
        raise DemoInputError(f"No image could be read: {skipped[0]}")
    return Batch(torch.cat(pixels), thumbnails, names, skipped)


class BoundedUploads(set):
    """Gradio's record of an app's uploaded files (`Blocks.upload_file_set`, also aged out by its
    `delete_cache`), kept under `max_bytes` in all: after each upload the oldest files are deleted
    until the others fit. A request that names a deleted file gets "<name>: file not found"."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.arrivals: dict[str, int] = {}  # path -> bytes, oldest first

    def update(self, *groups: Iterable[Any]) -> None:
        paths = [str(path) for group in groups for path in group]
        super().update(paths)
        for path in paths:
            self.arrivals.setdefault(path, _size(path))
        self.trim()

    def trim(self) -> None:
        """Forget what Gradio aged out, then delete the oldest files while the total is over the bound."""
        self.arrivals = {path: size or _size(path) for path, size in self.arrivals.items() if path in self}
        total = sum(self.arrivals.values())
        for path in list(self.arrivals):
            if total <= self.max_bytes:
                break
            total -= self.arrivals.pop(path)
            self.discard(path)
            Path(path).unlink(missing_ok=True)
            try:
                Path(path).parent.rmdir()  # Gradio keeps each upload in a folder named by its hash
            except OSError:
                pass  # not empty: the same content was uploaded under another name


def bound_upload_cache(app: Any, max_bytes: int) -> BoundedUploads:
    """Give the Gradio app `app` an upload record bounded by `max_bytes` (see BoundedUploads)."""
    uploads = BoundedUploads(max_bytes)
    uploads.update(app.upload_file_set)
    app.temp_file_sets = [uploads if files is app.upload_file_set else files for files in app.temp_file_sets]
    app.upload_file_set = uploads
    return uploads


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:  # moved into place by a background task a moment later: counted on the next upload
        return 0
