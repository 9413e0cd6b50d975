"""Feature cache for a frozen encoder: each image is encoded once, to disk, and read back memory-mapped.

Show and Tell and its successors train the decoder on a fixed CNN; running that CNN over every image
in every epoch is wasted work (on a CPU, almost all of an epoch's time). Layout on disk:

    <cache dir>/<encoder key>/shard-<hash>.npy    features of up to `shard_size` images, (n, ...) float
    <cache dir>/<encoder key>/shard-<hash>.json   manifest: image keys (one per row), shape, dtype, sha256

Keys, so that a change of anything the features depend on is a cache miss, never a stale hit:
- encoder key = hash of the encoder's name, architecture (module repr), weights (hash of the state dict),
  preprocessing spec, the source code of `Encoder.preprocess`/`Encoder.forward`, pooled vs per-region
  output (attention), and the storage dtype;
- image key = hash of the image file's absolute path, size in bytes and modification time (ns).
A changed image gets a new key and only that image is encoded again; stale rows are simply never read.

Each file is written to a temporary name, flushed and renamed; the manifest goes last and is the
completion marker, so a shard without one (a crash mid-write) is invisible. A manifest that does not
parse, or a `.npy` whose sha256 differs from the manifest's, is a corrupted shard: it is deleted and
its images encoded again.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from captioner.config import DataConfig
from captioner.data.batches import build_image_bank
from captioner.data.records import ImageRecord
from captioner.encoders.backbones import Encoder
from captioner.files import write_atomically
from captioner.modes import evaluating

CACHE_VERSION = 1  # bump when the file layout changes
Log = Callable[[str], None]


def encoder_identity(encoder: Encoder, dtype: str) -> dict[str, str]:
    """Everything a stored feature depends on apart from the image itself (see the module docstring)."""
    weights = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    # The transform's code is part of the key: switching e.g. bilinear -> bicubic resizing changes every feature.
    code = inspect.getsource(type(encoder).preprocess) + inspect.getsource(type(encoder).forward)
    return {"version": str(CACHE_VERSION), "encoder": encoder.name, "dtype": dtype, "regions": str(encoder.spatial),
            "architecture": _sha256(str(encoder)), "weights": weights.hexdigest(),
            "preprocessing": json.dumps(asdict(encoder.preprocessing), sort_keys=True), "transform_code": _sha256(code)}


def image_key(path: str) -> str:
    """Identity of an image file: absolute path + size + mtime. Editing or replacing the file changes it."""
    resolved = os.path.abspath(path)
    try:
        stat = os.stat(resolved)
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read the image file for the feature cache ({error.strerror})") from None
    return _sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}")[:32]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StoredFeatures:
    """Features of a list of images, read lazily from memory-mapped shards.

    Item i is image i's float32 feature tensor; a slice stacks its items. Only (shard path, row) pairs
    are kept, so pickling this into DataLoader workers copies no feature data.
    """

    def __init__(self, locations: list[tuple[Path, int]]) -> None:
        self.locations = locations
        self._open: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.stack([self[i] for i in range(*index.indices(len(self)))])  # (n, ...)
        path, row = self.locations[index]
        if path not in self._open:
            self._open[path] = np.load(path, mmap_mode="r")
        return torch.from_numpy(np.array(self._open[path][row], dtype=np.float32))  # copy: the map is read-only

    def __getstate__(self) -> dict:
        return {"locations": self.locations, "_open": {}}


class FeatureCache:
    """Encode images with a frozen `encoder` once; later calls read the stored features."""

    def __init__(self, directory: str | Path, encoder: Encoder, dtype: str = "float32", batch_size: int = 32,
                 shard_size: int = 1024, log: Log = print) -> None:
        self.encoder, self.dtype, self.log = encoder, dtype, log
        self.batch_size, self.shard_size = batch_size, shard_size
        self.identity = encoder_identity(encoder, dtype)
        self.key = _sha256(json.dumps(self.identity, sort_keys=True))[:16]
        self.directory = Path(directory) / f"{encoder.name}-{self.key}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PermissionError(f"data.feature_cache_dir={directory}: cannot create the feature cache "
                                  f"({error.strerror}); set data.feature_cache_dir to a writable folder") from None
        identity = json.dumps(self.identity, indent=2)
        write_atomically(self.directory / "encoder.json", identity)  # for people, not read back

    def features(self, records: Sequence[ImageRecord]) -> StoredFeatures:
        """The features of `records`, in order; images not in the cache are encoded and stored first."""
        keys = [image_key(record.path) for record in records]
        stored = self._read_manifests()
        todo: dict[str, ImageRecord] = {}  # key -> record, once per image file even if listed twice
        for key, record in zip(keys, records):
            if key not in stored:
                todo.setdefault(key, record)
        if todo:
            self._encode(list(todo.values()), list(todo), stored)
        else:
            self.log(f"feature cache: all {len(records)} images found in {self.directory}")
        return StoredFeatures([stored[key] for key in keys])

    def _read_manifests(self) -> dict[str, tuple[Path, int]]:
        """image key -> (shard .npy, row), from every complete and intact shard; corrupted shards are deleted."""
        stored: dict[str, tuple[Path, int]] = {}
        for manifest_path in sorted(self.directory.glob("shard-*.json")):
            array_path = manifest_path.with_suffix(".npy")
            try:
                image_keys = self._check_shard(manifest_path, array_path)
            except (ValueError, OSError, KeyError, TypeError, RecursionError) as error:
                self.log(f"feature cache: {array_path.name} is damaged ({error}); deleting it, its images will be encoded again")
                manifest_path.unlink(missing_ok=True)  # the marker first: a half-deleted shard is then invisible
                array_path.unlink(missing_ok=True)
                continue
            stored.update({key: (array_path, row) for row, key in enumerate(image_keys)})
        return stored

    def _check_shard(self, manifest_path: Path, array_path: Path) -> list[str]:
        manifest = json.loads(manifest_path.read_text())
        if manifest["version"] != CACHE_VERSION or manifest["encoder_key"] != self.key:
            raise ValueError("manifest belongs to another cache version or encoder")
        if _file_sha256(array_path) != manifest["sha256"]:
            raise ValueError("sha256 of the features differs from the manifest")
        array = np.load(array_path, mmap_mode="r")
        if list(array.shape) != manifest["shape"] or str(array.dtype) != manifest["dtype"]:
            raise ValueError(f"shape {array.shape} {array.dtype}, manifest says {manifest['shape']} {manifest['dtype']}")
        if len(manifest["image_keys"]) != array.shape[0]:
            raise ValueError("manifest lists a different number of images than the array holds")
        return list(manifest["image_keys"])

    def _encode(self, records: list[ImageRecord], keys: list[str], stored: dict[str, tuple[Path, int]]) -> None:
        """Encode `records` shard by shard; each finished shard is on disk even if a later one fails."""
        started = time.perf_counter()
        self.log(f"feature cache: encoding {len(records)} images with {self.encoder.name} into {self.directory}")
        for start in range(0, len(records), self.shard_size):
            chunk, chunk_keys = records[start : start + self.shard_size], keys[start : start + self.shard_size]
            array_path = self._write_shard(self._encode_chunk(chunk), chunk_keys)
            stored.update({key: (array_path, row) for row, key in enumerate(chunk_keys)})
            done = start + len(chunk)
            self.log(f"feature cache: {done}/{len(records)} images, {done / (time.perf_counter() - started):.1f} images/s")

    @torch.no_grad()
    def _encode_chunk(self, records: list[ImageRecord]) -> np.ndarray:
        pixels = build_image_bank(records, self.encoder.preprocess)  # (n, 3, S, S) uint8
        device = next(self.encoder.parameters()).device
        with evaluating(self.encoder):  # BatchNorm running statistics, dropout off: the features of inference
            outputs = [self.encoder(pixels[i : i + self.batch_size].to(device)).float().cpu()
                       for i in range(0, len(pixels), self.batch_size)]  # each (b, ...)
        return torch.cat(outputs).numpy().astype(self.dtype)  # (n, ...)

    def _write_shard(self, array: np.ndarray, keys: list[str]) -> Path:
        """Features first, manifest last (the completion marker); both written atomically."""
        name = "shard-" + _sha256("\0".join(keys))[:16]
        array_path = self.directory / f"{name}.npy"
        buffer = io.BytesIO()
        np.save(buffer, array)
        data = buffer.getvalue()
        write_atomically(array_path, data)
        manifest = {"version": CACHE_VERSION, "encoder_key": self.key, "image_keys": keys,
                    "shape": list(array.shape), "dtype": str(array.dtype), "sha256": hashlib.sha256(data).hexdigest()}
        write_atomically(self.directory / f"{name}.json", json.dumps(manifest).encode())
        return array_path


def feature_cache_directory(data: DataConfig) -> Path:
    """data.feature_cache_dir, or <data.root>/.cache/features."""
    return Path(data.feature_cache_dir or Path(data.root).expanduser() / ".cache" / "features")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
