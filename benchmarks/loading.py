"""Data loading is never the bottleneck: training-step time through the real DataLoader path against
synthetic in-memory batches (the same model and step; the difference is what loading costs).

A small shapes dataset (JPEG, 64 px, already the model's size: no resize work) is written to a temporary
folder. Paths, as captioner/training/trainer.py builds them (captioner/data/batches.py):
  in-memory batches      the same (pixels, captions) tensors every step: no loading at all
  loader, image bank     images decoded and preprocessed once into a uint8 bank (the trainer's choice
                         when they fit in memory), the DataLoader only indexes and collates
  loader, disk, W        every image read and decoded per step, with W worker processes
Each sample times the steps of one epoch after the first batch (worker start-up is paid once per epoch
and left out); "loader only" iterates without training: the loader's own rate. Model: small_cnn with the
Show-and-Tell decoder, the fastest step, so loading's share is the largest it gets.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Settings, measure, milliseconds, table, write_result
from benchmarks.training import QUICK_OVERRIDES, train_step
from benchmarks.workload import make_model, shapes_config, shapes_records, shapes_vocabulary
from captioner.data.batches import CaptionedImages, build_image_bank, epoch_batches, make_loader

BATCHES = 4  # per epoch: the first is left out of the timing


def run(settings: Settings) -> dict:
    config = shapes_config((QUICK_OVERRIDES if settings.quick else ()) + ("model.attention=false",))
    B, C = config.train.batch_size, config.train.captions_per_image
    vocab = shapes_vocabulary()
    model = make_model(config, vocab).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as directory:
        records = shapes_records(Path(directory), B * BATCHES)
        preprocess = model.encoder.preprocess

        def dataset(bank):
            return CaptionedImages(records, vocab, preprocess, config.data.max_caption_length, C, 0, bank)
        on_disk, banked = dataset(None), dataset(build_image_bank(records, preprocess))
        batches = epoch_batches(len(records), B, seed=0, epoch=0)
        fixed = next(iter(make_loader(banked, batches[:1], vocab.pad_id, 0, False)))
        step = lambda pixels, captions: train_step(model, optimizer, captions, C, images=pixels)  # noqa: E731
        variants = {"in-memory batches": lambda: _steps([fixed] * len(batches), step),
                    "loader, image bank, 0 workers": lambda: _epoch(banked, batches, vocab.pad_id, 0, step),
                    "loader, disk, 0 workers": lambda: _epoch(on_disk, batches, vocab.pad_id, 0, step),
                    "loader, disk, 2 workers": lambda: _epoch(on_disk, batches, vocab.pad_id, 2, step),
                    "loader only, disk, 0 workers": lambda: _epoch(on_disk, batches, vocab.pad_id, 0, None),
                    "loader only, image bank, 0 workers": lambda: _epoch(banked, batches, vocab.pad_id, 0, None)}
        timings = measure(variants, max(2, settings.repeats // 2), self_timed=True)  # each sample is an epoch
    base = timings["in-memory batches"]["min"]
    with_steps = {name: result for name, result in timings.items() if not name.startswith("loader only")}
    rows = [[name, f"{milliseconds(result['min'])} / {milliseconds(result['median'])}",
             f"{result['min'] / base:.2f}" if name in with_steps else ""] for name, result in timings.items()]
    print(table(f"Step time with data loading, {B} images x {C} captions, small_cnn (64 px JPEG)",
                ["path", "ms per step (min / median)", "vs in-memory"], rows))
    ratios = {name: round(result["min"] / base, 3) for name, result in with_steps.items()}
    path = write_result(settings, "loading", {"batch": B, "captions_per_image": C, "batches_per_epoch": len(batches),
                                              "timings": timings, "ratios_vs_in_memory": ratios})
    return {"path": str(path), "ratios": ratios}


def _epoch(dataset, batches, pad_id: int, workers: int, step) -> float:
    """Seconds per batch over one epoch, the first batch (worker start-up) left out."""
    iterator = iter(make_loader(dataset, batches, pad_id, workers, pin_memory=False))
    next(iterator)
    return _steps(iterator, step, len(batches) - 1)


def _steps(batches, step, count: int | None = None) -> float:
    batches = list(batches)[1:] if count is None else batches
    started, done = time.perf_counter(), 0
    for pixels, captions in batches:
        if step is not None:
            step(pixels, captions)
        done += 1
    return (time.perf_counter() - started) / max(done, 1)
