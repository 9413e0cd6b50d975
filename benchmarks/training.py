"""Training throughput of a full Captioner step (loss, backward, clip, Adam), images/s and tokens/s.

configs/shapes.yaml sizes: 32 images x 5 captions per step, E=128, H=256, 1 layer, ~50 words. Variants:
  small_cnn end-to-end            pixels in, the CNN trained too; Show-and-Tell decoder (whole-sequence
                                  StackedLSTM: the fast path)
  ... reference LSTM              the same with StackedLSTM(fast=False): what the fast path buys end to end
  ... attention                   the attention decoder (shapes.yaml's default), which steps the LSTM
  <backbone> frozen, pixels       the frozen encoder runs on every step (no feature cache)
  <backbone> frozen, cache        features read from a real FeatureCache on disk (memory-mapped shards)
for small_cnn at 64 px and efficientnet_lite0 at 224 px. The cache ratio (pixels / cache step time) is
how much faster every epoch after the first gets; the first epoch pays the encoding once.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import Settings, measure, milliseconds, table, write_result
from benchmarks.workload import caption_batch, make_model, shapes_config, shapes_records, shapes_vocabulary
from captioner.data.feature_cache import FeatureCache
from captioner.images import load_image
from captioner.model import Captioner

QUICK_OVERRIDES = ("train.batch_size=2", "train.captions_per_image=2", "model.embed_size=16", "model.hidden_size=16")


def train_step(model: Captioner, optimizer: torch.optim.Optimizer, captions: torch.Tensor,
               captions_per_image: int, images: torch.Tensor | None = None,
               features: torch.Tensor | None = None) -> None:
    """What Trainer.train_step (captioner/training/trainer.py) does, minus logging: loss, backward,
    clip at 5, one Adam step."""
    _, loss = model(images, captions, features=features, captions_per_image=captions_per_image)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def variants(settings: Settings, root: Path) -> tuple[dict, dict]:
    """name -> step function, and name -> (images, real target tokens) per step."""
    overrides = QUICK_OVERRIDES if settings.quick else ()
    config = shapes_config(overrides)
    B, C = config.train.batch_size, config.train.captions_per_image
    vocab = shapes_vocabulary()
    captions = caption_batch(vocab, B * C, config.data.max_caption_length)
    tokens = int((captions[:, 1:] != vocab.pad_id).sum())
    records = shapes_records(root / "data", max(B, 8))[:B]
    steps = {}
    for backbone, frozen, decoder in [("small_cnn", False, "fast"), ("small_cnn", False, "reference LSTM"),
                                      ("small_cnn", False, "attention"), ("small_cnn", True, "fast"),
                                      ("efficientnet_lite0", True, "fast")]:
        if settings.quick and backbone != "small_cnn":
            continue
        model_config = shapes_config(overrides + (f"model.backbone={backbone}", f"model.freeze_encoder={frozen}",
                                                  f"model.attention={decoder == 'attention'}"))
        model = make_model(model_config, vocab).train()
        model.decoder.rnn.fast = decoder != "reference LSTM"
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        pixels = _pixels(model, records)
        label = f"{backbone} {'frozen' if frozen else 'end-to-end'}" + ("" if decoder == "fast" else f", {decoder}")
        steps[f"{label}, pixels"] = _step(model, optimizer, captions, C, images=pixels)
        if frozen:
            cache = FeatureCache(root / "cache", model.encoder, log=lambda message: None)
            stored = cache.features(records)  # encoded once here; the timed step reads the shards
            steps[f"{label}, cache"] = _step(model, optimizer, captions, C, stored=stored)
    return steps, {"images": B, "captions": B * C, "tokens": tokens}


def _pixels(model: Captioner, records) -> torch.Tensor:
    """The in-memory uint8 bank the trainer keeps when images fit: (B, 3, S, S)."""
    return torch.stack([model.encoder.preprocess(load_image(record.path)) for record in records])


def _step(model, optimizer, captions, captions_per_image, images=None, stored=None):
    def run():
        features = torch.stack([stored[index] for index in range(len(stored))]) if stored is not None else None
        train_step(model, optimizer, captions, captions_per_image, images=images, features=features)
    return run


def run(settings: Settings) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        steps, sizes = variants(settings, Path(directory))
        timings = measure(steps, settings.repeats)
    rows, throughput = [], {}
    for name, result in timings.items():
        seconds = result["min"]
        throughput[name] = {"images_per_s": round(sizes["images"] / seconds, 1),
                            "tokens_per_s": round(sizes["tokens"] / seconds, 1), "step_ms": round(seconds * 1e3, 2)}
        rows.append([name, f"{milliseconds(seconds)} / {milliseconds(result['median'])}",
                     throughput[name]["images_per_s"], throughput[name]["tokens_per_s"]])
    ratios = _ratios(timings)
    print(table(f"Training step, {sizes['images']} images x {sizes['captions'] // sizes['images']} captions, "
                f"{sizes['tokens']} target tokens", ["variant", "step ms (min / median)", "images/s", "tokens/s"],
                rows))
    print("\n" + "\n".join(f"- {name}: {value:.2f}x" for name, value in ratios.items()))
    path = write_result(settings, "training", {"sizes": sizes, "timings": timings, "throughput": throughput,
                                               "ratios": ratios})
    return {"path": str(path), "ratios": ratios}


def _ratios(timings: dict) -> dict[str, float]:
    """Speed-ups measured in this run: the feature cache per backbone, and the fast LSTM end to end; each by
    wall-clock minimum and by CPU time (steadier on a shared machine)."""
    pairs = {f"cache speed-up, {name.split(' frozen')[0]}": (name.replace(", cache", ", pixels"), name)
             for name in timings if name.endswith(", cache")}
    reference = "small_cnn end-to-end, reference LSTM, pixels"
    if reference in timings:
        pairs["fast LSTM speed-up of the whole step"] = (reference, "small_cnn end-to-end, pixels")
    ratios = {}
    for label, (slow, fast) in pairs.items():
        ratios[label] = round(timings[slow]["min"] / timings[fast]["min"], 2)
        ratios[f"{label} (CPU time)"] = round(timings[slow]["cpu_min"] / timings[fast]["cpu_min"], 2)
    return ratios
