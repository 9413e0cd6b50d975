"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never a half.

Every file the project writes for a user to keep (checkpoints, the vocabulary, feature-cache shards,
the built-in dataset's index) goes through `write_atomically`: a temporary file beside the target,
flushed to disk, then renamed over it (`os.replace` is atomic within one directory).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object] | bytes) -> None:
    """Write `path` via `write(handle)` (or the given bytes) into a temporary file, fsync, rename.

    On any failure the temporary file is removed and the previous file at `path` is left untouched.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if isinstance(write, bytes):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
