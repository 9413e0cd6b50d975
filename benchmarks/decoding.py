"""Decoding throughput, captions/s: batched greedy and beam search against the per-image loop.

The batched search (captioner/decoding.py) advances all images and all beams in one decoder step per
time step; the per-image loop calls the same beam_search on one image at a time, which is what a search
written without batching costs. Both must return identical captions and scores (checked here on every
run). Model: configs/shapes.yaml sizes (E=128, H=256, 1 layer, ~50 words), seeded random weights: its
captions rarely end early, so every search runs the full max_length steps (the worst case).
"""
from __future__ import annotations

import torch

from benchmarks.common import Settings, measure, milliseconds, table, write_result
from benchmarks.workload import make_model, shapes_config, shapes_vocabulary
from captioner.decoding import beam_search

IMAGES, MAX_LENGTH, BEAMS = 64, 20, (1, 3, 5)
DECODERS = ("show-and-tell", "attention")
QUICK_IMAGES, QUICK_MAX_LENGTH = 4, 5


def searches(model, features: torch.Tensor, beam_size: int, max_length: int):
    """(batched, per-image loop) closures returning the generations of every image."""
    decoder, vocab = model.decoder, model.vocab

    def search(rows: torch.Tensor):
        return beam_search(decoder.step, decoder.start(rows), vocab.start_id, vocab.end_id, beam_size, max_length)

    def batched():
        with torch.no_grad():
            return search(features)

    def per_image():
        with torch.no_grad():
            return [generation for index in range(len(features)) for generation in search(features[index : index + 1])]
    return batched, per_image


def identical(first, second) -> bool:
    """Same captions in the same order, same finished flags, scores equal to 1e-4."""
    return all(a.token_ids == b.token_ids and a.finished == b.finished
               and all(abs(x - y) <= 1e-4 for x, y in zip(a.log_probs, b.log_probs)) for a, b in zip(first, second))


def run(settings: Settings) -> dict:
    images = QUICK_IMAGES if settings.quick else IMAGES
    max_length = QUICK_MAX_LENGTH if settings.quick else MAX_LENGTH
    pixels = torch.randint(0, 256, (images, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    timings, checks, rows, ratios = {}, {}, [], {}
    repeats = max(2, settings.repeats // 2)  # the per-image loops take seconds each: fewer, longer samples
    for decoder in DECODERS:
        model = make_model(shapes_config((f"model.attention={decoder == 'attention'}",)), shapes_vocabulary()).eval()
        with torch.no_grad():
            features = model.encoder(pixels)  # (B, F), or (B, regions, D) for attention
        for beam in BEAMS:
            key = f"{decoder}, beam {beam}"
            batched, per_image = searches(model, features, beam, max_length)
            checks[key] = identical(batched(), per_image())
            result = measure({"batched": batched, "per-image loop": per_image}, repeats)
            timings[key] = result
            speedup = result["per-image loop"]["min"] / result["batched"]["min"]
            ratios[key] = round(speedup, 2)
            rows.append([decoder, "greedy" if beam == 1 else f"beam {beam}", milliseconds(result["batched"]["min"]),
                         f"{images / result['batched']['min']:.1f}", milliseconds(result["per-image loop"]["min"]),
                         f"{images / result['per-image loop']['min']:.1f}", f"{speedup:.1f}x", checks[key]])
    print(table(f"Decoding {images} images, max_length {max_length} (captions/s = images/s, best of each)",
                ["decoder", "search", "batched ms", "batched captions/s", "per-image ms", "per-image captions/s",
                 "batched speed-up", "identical output"], rows))
    path = write_result(settings, "decoding", {"images": images, "max_length": max_length, "timings": timings,
                                               "speedup": ratios, "identical": checks})
    return {"path": str(path), "ratios": ratios, "identical": checks}
