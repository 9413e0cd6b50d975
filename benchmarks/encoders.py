"""Encoder feature extraction, images/s: each backbone at its own input size, eval mode, no gradient.

uint8 pixels in (what the data pipeline hands over; normalisation is inside Encoder.forward), features out.
Random weights: a pretrained network costs the same time. These rates bound how fast the feature cache
is filled (once) and how much a frozen encoder without the cache costs every epoch.
"""
from __future__ import annotations

import torch

from benchmarks.common import Settings, measure, milliseconds, table, write_result
from captioner.encoders.backbones import build_encoder

BACKBONES = {"small_cnn": 64, "efficientnet_lite0": 16}  # name -> images per batch
QUICK_BATCH = 2


def run(settings: Settings) -> dict:
    calls, sizes = {}, {}
    for name, batch in BACKBONES.items():
        batch = QUICK_BATCH if settings.quick else batch
        torch.manual_seed(0)
        encoder = build_encoder(name).eval()
        side = encoder.preprocessing.image_size
        pixels = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        sizes[name] = {"batch": batch, "image_size": side, "feature_dim": encoder.feature_dim}
        calls[name] = _extract(encoder, pixels)
    timings = measure(calls, settings.repeats)
    rates = {name: round(sizes[name]["batch"] / timings[name]["min"], 1) for name in calls}
    rows = [[name, f"{sizes[name]['image_size']} px", sizes[name]["batch"], sizes[name]["feature_dim"],
             f"{milliseconds(timings[name]['min'])} / {milliseconds(timings[name]['median'])}", rates[name]]
            for name in calls]
    print(table("Encoder feature extraction (eval, no grad)",
                ["backbone", "input", "batch", "feature dim", "batch ms (min / median)", "images/s"], rows))
    path = write_result(settings, "encoders", {"sizes": sizes, "timings": timings, "images_per_s": rates})
    return {"path": str(path), "images_per_s": rates}


def _extract(encoder, pixels):
    def run():
        with torch.no_grad():
            return encoder(pixels)
    return run
