"""Metrics as people read them: one line per training epoch and the coco-caption table at the end.

The numbers are rounded to what they mean (scores to one decimal, the loss to three digits); the
full-precision record stays in the run's history.jsonl and metrics.json.

    epoch 3/8  loss 0.806  val BLEU-4 67.0  CIDEr-D 350.7  content 40.0%  24 s  e.g. "a small purple circle"
"""
from __future__ import annotations

from typing import Any, Mapping

# The table papers print (coco-caption's order), then this project's content accuracy on the built-in scenes.
TABLE = (("bleu1", "BLEU-1"), ("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"),
         ("rouge_l", "ROUGE-L"), ("cider", "CIDEr-D"), ("content_accuracy", "content accuracy %"))
MISSING = {"meteor": "left out (no Java or pycocoevalcap, or eval.meteor=false)"}  # why a row of TABLE can be absent


def epoch_line(entry: Mapping[str, Any], total_epochs: int, example: str = "") -> str:
    """One compact line for an epoch's history entry (train loss, validation scores, time, a caption)."""
    parts = [f"epoch {entry['epoch']}/{total_epochs}"]
    if isinstance(entry.get("train_loss"), (int, float)):
        parts.append(f"loss {entry['train_loss']:.3f}")
    if isinstance(entry.get("train_reward"), (int, float)):
        parts.append(f"reward {entry['train_reward']:.3f}")
    parts.append(f"val BLEU-4 {entry['bleu4']:.1f}")
    for key, label in (("meteor", "METEOR"), ("cider", "CIDEr-D")):
        if isinstance(entry.get(key), (int, float)):
            parts.append(f"{label} {entry[key]:.1f}")
    if isinstance(entry.get("content_accuracy"), (int, float)):
        parts.append(f"content {entry['content_accuracy']:.1f}%")
    if entry.get("epoch_seconds"):
        parts.append(f"{entry['epoch_seconds']:.0f} s")
    if example:
        parts.append(f'e.g. "{example}"')
    return "  ".join(parts)


def metric_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of the scores in `metrics` (one decimal), headed by split and beam."""
    heading = f"{metrics.get('split', '?')} split, {metrics.get('num_images', '?')} images, beam {metrics.get('beam_size', '?')}"
    rows = []
    for key, label in TABLE:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            rows.append((label, f"{value:.1f}"))
        elif key in MISSING:
            rows.append((label, MISSING[key]))
    width = max(len(label) for label, _ in rows) if rows else 0
    return "\n".join([heading, *(f"  {label:<{width}}  {value:>5}" for label, value in rows)])
