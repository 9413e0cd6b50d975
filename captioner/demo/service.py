"""What the web demo needs around a checkpoint or a release: find the runs and the shipped models, load
and keep models, describe them, and turn one request (decoded images + decoding settings) into captions.

No Gradio here: every function takes and returns plain values, so it is tested without a server.
Uploads are read in captioner/demo/uploads.py. Decoding reuses `Captioner.generate`, the one
generate() of the project.
"""
from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from PIL import Image

from captioner.checkpoint import CheckpointError
from captioner.decoding import Decoding, Generation
from captioner.model import Captioner, load_checkpoint
from captioner.model_card import DATASET_TERMS
from captioner.modes import evaluating
from captioner.release import from_pretrained
from captioner.release_format import CONFIG_FILE

DECODING_MODES = ("beam search", "greedy", "sampling")
MAX_BEAM_SIZE = 10
MAX_CAPTION_LENGTH = 40
README_PHOTO_SECTION = "Train on Flickr8k / Flickr30k / COCO"


class DemoInputError(ValueError):
    """A request the demo refuses; the message is one line, safe to show to the user."""


def requested_decoding(model: Captioner, mode: str = "beam search", beam_size: int = 3, max_length: int = 20,
                       temperature: float = 1.0, seed: int | None = None) -> Decoding:
    """The model's own decoding (no <unk>, repeats: as in its evaluation) with what a request chooses:
    the mode (beam search | greedy | sampling), the beams, the length and the softmax temperature
    (sampling only: < 1 sharper, > 1 more varied; seed None = a fresh draw), within the demo's limits."""
    if mode not in DECODING_MODES:
        raise DemoInputError(f"decoding: expected one of {', '.join(DECODING_MODES)}, got {mode!r}")
    if not 1 <= beam_size <= MAX_BEAM_SIZE:
        raise DemoInputError(f"beam size: expected 1 to {MAX_BEAM_SIZE}, got {beam_size}")
    if not 1 <= max_length <= MAX_CAPTION_LENGTH:
        raise DemoInputError(f"max length: expected 1 to {MAX_CAPTION_LENGTH} words, got {max_length}")
    if not math.isfinite(temperature) or mode == "sampling" and not 0.05 <= temperature <= 5.0:
        raise DemoInputError(f"temperature: expected 0.05 to 5, got {temperature}")
    if mode == "sampling":
        return replace(model.decoding, max_length=max_length, temperature=temperature, seed=seed)
    return replace(model.decoding, beam_size=beam_size if mode == "beam search" else 1, max_length=max_length)


def find_checkpoints(runs_dir: str | Path) -> list[Path]:
    """best.pt of every run under `runs_dir` (last.pt where a run has no best.pt yet), sorted."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = {path.parent: path for path in root.rglob("last.pt")}
    found.update({path.parent: path for path in root.rglob("best.pt")})
    return sorted(found.values())


def load_model(path: Path, device: str = "cpu") -> Captioner:
    """A release directory (captioner/release.py) or a checkpoint file, ready to caption."""
    return from_pretrained(path, device=device) if path.is_dir() else load_checkpoint(path, device=device)


def dataset_format(path: Path) -> str | None:
    """The data.format a model was trained on, read cheaply (no weights): from a release's config.json
    or from the config.yaml beside a run's checkpoint; None when neither says."""
    try:
        if path.is_dir():
            return json.loads((path / CONFIG_FILE).read_text())["training"]["data"]["format"]
        return yaml.safe_load((path.parent / "config.yaml").read_text())["data"]["format"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None


def checkpoint_label(path: Path, runs_dir: str | Path) -> str:
    """A short, stable name for the dropdown: the path relative to the runs directory."""
    try:
        return str(path.relative_to(runs_dir))
    except ValueError:
        return f"{path.parent.name}/{path.name}"


class ModelCatalog:
    """The checkpoints the demo may serve, by label, loaded on first use and kept (at most `keep`)."""

    def __init__(self, checkpoints: dict[str, Path], keep: int = 2, device: str = "cpu") -> None:
        if not checkpoints:
            raise DemoInputError("no checkpoints to serve")
        self.checkpoints = dict(checkpoints)
        self.keep, self.device = keep, device
        self._loaded: OrderedDict[str, Captioner] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def single(cls, model: Captioner, label: str = "loaded model") -> ModelCatalog:
        """A catalog of one model that is already in memory."""
        run_dir = model.run_config.run_dir if model.run_config else "runs"
        catalog = cls({label: Path(run_dir) / "best.pt"}, keep=1)
        catalog._loaded[label] = model
        return catalog

    @property
    def labels(self) -> list[str]:
        return list(self.checkpoints)

    def load_first(self, skip_unusable: bool, log: Callable[[str], None]) -> str:
        """Load the first checkpoint (the default choice) now, not on the first request, and return its
        label. With skip_unusable, a checkpoint that does not load is named in one line of `log` and
        dropped, and the next one is tried: one broken run does not keep the others from being served."""
        while True:
            label = self.labels[0]
            try:
                self.get(label)
                return label
            except CheckpointError as error:
                if not skip_unusable or len(self.checkpoints) == 1:
                    raise
                log(f"warning: skipping {self.checkpoints.pop(label)}: {str(error).splitlines()[0]}")

    def get(self, label: str) -> Captioner:
        """The model for `label`; only labels of this catalog are accepted, never a path."""
        if label not in self.checkpoints:
            raise DemoInputError(f"model: {str(label)[:80]!r} is not one of the checkpoints this demo serves")
        with self._lock:  # two requests for the same new model load it once
            if label not in self._loaded:
                self._loaded[label] = load_model(self.checkpoints[label], device=self.device)
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(label)
            return self._loaded[label]


def caption_pixels(model: Captioner, pixels: torch.Tensor, decoding: Decoding) -> list[Generation]:
    """Caption preprocessed images (B, 3, S, S) with `Captioner.generate`, alternatives best first."""
    with evaluating(model):
        return model.generate(pixels, decoding)


def caption_images(model: Captioner, images: list[Image.Image], decoding: Decoding) -> list[Generation]:
    """Caption decoded RGB images: the encoder's transform, then `caption_pixels`."""
    return caption_pixels(model, model.pixels(images), decoding)


def caption_text(generation: Generation, rank: int = 0) -> str:
    return " ".join(generation.words[rank]) or "(empty caption)"


def alternatives_table(generation: Generation) -> list[list[Any]]:
    """Rows of [rank, caption, total log-probability, finished with <end>], best first."""
    return [[rank + 1, caption_text(generation, rank), round(log_prob, 3), finished]
            for rank, (log_prob, finished) in enumerate(zip(generation.log_probs, generation.finished))]


def read_run_metrics(run_dir: Path) -> dict[str, Any]:
    """<run_dir>/metrics.json (the test-split evaluation written by train.py), or {} if absent or bad."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        return {}
    return metrics if isinstance(metrics, dict) else {}


def model_summary(model: Captioner, checkpoint: Path) -> str:
    """Markdown: architecture, data, scores, and in plain words what this model can describe."""
    config, data = model.config, model.run_config.data if model.run_config else None
    attention = " with soft attention" if config.attention else ""
    name = f"`{checkpoint.name}` (a release)" if checkpoint.is_dir() else f"`{checkpoint.parent.name}/{checkpoint.name}`"
    lines = [f"**Model** {name}: {config.backbone} encoder → "
             f"{config.num_layers}-layer **{config.cell}** decoder{attention} "
             f"(E={config.embed_size}, H={config.hidden_size}, {len(model.vocab)} words).",
             f"**Trained on** the `{data.format}` dataset ({Path(data.root).name})." if data else "",
             _score_line(read_run_metrics(checkpoint.parent), model.metrics),
             what_it_describes(data.format) if data else ""]
    return "\n\n".join(line for line in lines if line)


def _score_line(test_metrics: dict[str, Any], val_metrics: dict[str, Any]) -> str:
    for metrics in (test_metrics, val_metrics):
        if isinstance(metrics.get("bleu4"), (int, float)):
            split, beam = metrics.get("split", "val"), metrics.get("beam_size", "?")
            bleu1 = f", BLEU-1 {metrics['bleu1']:.1f}" if isinstance(metrics.get("bleu1"), (int, float)) else ""
            return f"**Scores** on the {split} split (beam {beam}): BLEU-4 {metrics['bleu4']:.1f}{bleu1}."
    return "**Scores**: no metrics.json in the run directory yet."


def what_it_describes(dataset_format: str) -> str:
    """The page's plain statement of what the loaded model can and cannot caption."""
    if dataset_format == "shapes":
        return ("⚠️ This model was trained on the built-in synthetic scenes: it describes coloured circles, "
                "squares, triangles and diamonds on a plain background, **not photos**. A photo gets a "
                "caption about shapes. To caption photos, train on a photo dataset: see the README section "
                f"*{README_PHOTO_SECTION}*.")
    domain = DATASET_TERMS[dataset_format][0] if dataset_format in DATASET_TERMS else "everyday scenes"
    return (f"This model was trained on `{dataset_format}` data ({domain}): it describes such images in that "
            "dataset's words, and images far from them get wrong captions.")
