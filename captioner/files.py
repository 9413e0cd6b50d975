"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never a half.

Every file the project writes for a user to keep (checkpoints, metrics, the history, config.yaml,
the vocabulary, feature-cache shards and index, attention maps) goes through `write_atomically`: a
temporary file beside the target, flushed to disk, then renamed over it (`os.replace` is atomic
within one directory). A release, a directory of files, goes through `write_directory_atomically`:
a temporary directory beside the target, every file and the directory flushed, then renamed. The built-in dataset's images are written in place:
its index, written last and atomically, is what marks them complete (data/shapes.py).

    write_atomically(path, "text")                    # str: written as UTF-8
    write_atomically(path, b"bytes")
    write_atomically(path, lambda handle: torch.save(payload, handle))   # writes into a binary handle

The new file's mode follows the umask, like a file that `open(path, "w")` creates (the kernel
applies the umask to the mode 0o666 given here; `tempfile.mkstemp` would give 0600 whatever it is).
A failed write raises `WriteError` (an OSError) naming the file; the previous file is untouched.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

Content = str | bytes | Callable[[BinaryIO], object]
NEW_FILE_MODE = 0o666  # before the umask, as open(path, "w") gives


class WriteError(OSError):
    """A file could not be written (a full disk, a vanished folder); the file there before is kept."""

    def __init__(self, error: OSError, path: Path) -> None:
        super().__init__(error.errno, error.strerror or str(error), str(path))  # strerror: the system's reason

    def __str__(self) -> str:  # one line that names the file, without OSError's "[Errno N]"
        return f"could not write {self.filename} ({self.strerror}); the file there before is kept"


def write_atomically(path: str | Path, content: Content) -> None:
    """Write `content` (text, bytes or a function that writes into a binary handle) to `path`.

    On any failure the temporary file is removed and the previous file at `path` is left untouched;
    an OSError becomes a WriteError that names `path`.
    """
    path = Path(path)
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if isinstance(content, str):
                handle.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error, path) from error
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty `.NAME.RANDOM.tmp` beside `path`, opened for writing, mode 0o666 less the umask."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE), temporary
        except FileExistsError:
            continue  # another writer drew the same name: draw again
        except OSError as error:
            raise WriteError(error, path) from error


def write_directory_atomically(directory: str | Path, files: dict[str, bytes]) -> None:
    """Write `files` (name -> bytes) as the directory `directory`, which appears whole or not at all.
    An existing directory there is set aside only once the new one is complete, and removed last."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        for name, content in files.items():
            _write_synced(temporary / name, content)
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp made it 0700 whatever the umask
        _sync_directory(temporary)
        _move_into_place(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _write_synced(path: Path, content: bytes) -> None:
    with open(path, "wb") as handle:  # open() gives the umask's mode, as any new file
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _move_into_place(temporary: Path, directory: Path) -> None:
    """Rename `temporary` to `directory`; an old directory there is set aside first and removed last."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    try:
        os.replace(temporary, directory)
    except BaseException:
        if old is not None:
            os.replace(old, directory)
        raise
    _sync_directory(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
