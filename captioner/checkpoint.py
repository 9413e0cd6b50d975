"""Checkpoints: a plain dict of state dicts + config + vocabulary, saved atomically, loaded safely.

    {"format_version": 1, "config": {...}, "vocab": {...}, "model": state_dict,
     "optimizer": ..., "scheduler": ..., "progress": {...}, "rng": {...}, "metrics": {...}}

Saving goes through `files.write_atomically` (temporary file, fsync, rename), so a crash or a full
disk leaves the previous checkpoint intact and ends in one WriteError naming the file.
Loading always uses `torch.load(weights_only=True)`: a checkpoint is data, never code, and there is
no retry without it. This module reads and writes files only; the model is rebuilt from a
checkpoint in one place, `captioner.model.load_checkpoint`.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from captioner.files import write_atomically

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, unsafe or incompatible; the message names the file."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: temp file in the same directory, fsync, rename.

    A failed write (full disk, vanished directory) raises WriteError (an OSError) naming the file; the
    previous checkpoint at `path` is left byte-identical and no temporary file is left behind.
    """
    write_atomically(path, lambda handle: _save(payload, handle))


def _save(payload: dict[str, Any], handle: BinaryIO) -> None:
    """torch.save into `handle`, raising what stopped it. When a write into the handle fails (a full disk)
    or is interrupted (a second Ctrl-C), torch's zip writer answers a RuntimeError ("unexpected pos")
    while it closes the archive; the OSError or KeyboardInterrupt that caused it is its __context__."""
    try:
        torch.save({"format_version": FORMAT_VERSION, **payload}, handle)
    except RuntimeError as error:
        cause = error.__context__
        while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the raw checkpoint dict, refusing anything that is not plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found" + (" (it is a directory)" if path.is_dir() else ""))
    _verify_checksums(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0][:200] if str(error) else "unsafe content"
        raise CheckpointError(f"{path}: refused to load, it is not plain checkpoint data ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: checkpoint is damaged ({type(error).__name__})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: not a captioner checkpoint (expected a dict with 'model' and 'config')")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this captioner reads version {FORMAT_VERSION}")
    check_weights(payload["model"], path)
    return payload


def check_weights(weights: Any, path: str | Path) -> None:
    """A checkpoint's 'model' entry must be a dict of finite tensors: anything else is named, so a
    crafted or NaN-trained file is refused at load instead of crashing later or captioning "are"."""
    if not isinstance(weights, dict) or not all(isinstance(name, str) and isinstance(value, torch.Tensor)
                                                for name, value in weights.items()):
        raise CheckpointError(f"{path}: not a captioner checkpoint (its 'model' entry is not a dict of tensors)")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values; the checkpoint cannot be used")


def _verify_checksums(path: Path) -> None:
    """Check every record's CRC-32 in the zip archive that torch.save writes. torch.load does not,
    so without this a flipped bit inside a tensor would load silently as a different model."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as error:  # any way of failing to read the archive means the file is not intact
        raise CheckpointError(f"{path}: checkpoint is damaged (not a complete zip archive: "
                              f"{type(error).__name__})") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: checkpoint is damaged (checksum mismatch in {damaged})")


def check_compatible(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: str | Path) -> None:
    """Name the first mismatching weight with both shapes, instead of a wall of load_state_dict errors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model built from its config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: {name} has shape {tuple(found[name].shape)} in the checkpoint, "
                                  f"but the config and vocabulary give {tuple(tensor.shape)}")
