"""The inputs the benchmarks share: the shapes vocabulary, caption batches, models, a small dataset on disk.

Everything is generated (the built-in shapes scenes), seeded, and offline: no weights are downloaded, so
encoders start from random weights, which costs the same time as trained ones.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from captioner.config import Config, DataConfig, SyntheticConfig, load_config
from captioner.data import load_dataset
from captioner.data.records import ImageRecord
from captioner.data.shapes import sample_scene, scene_captions
from captioner.model import Captioner
from captioner.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "configs" / "shapes.yaml"


def shapes_captions(count: int, seed: int = 0) -> list[str]:
    """`count` true captions of random shapes scenes (five per scene), as the dataset's generator writes them."""
    rng = random.Random(seed)
    captions: list[str] = []
    while len(captions) < count:
        captions += scene_captions(sample_scene(rng, 64), rng)
    return captions[:count]


def shapes_vocabulary() -> Vocabulary:
    return Vocabulary.build(shapes_captions(2000), min_count=1)


def shapes_config(overrides: tuple[str, ...] = ()) -> Config:
    """configs/shapes.yaml (small_cnn, E=128, H=256, 1 layer, 32 images x 5 captions) plus overrides."""
    return load_config(SHAPES_CONFIG, list(overrides))


def caption_batch(vocab: Vocabulary, count: int, max_length: int, seed: int = 0) -> torch.Tensor:
    """(count, L) ids <start> w_1 .. w_n <end> <pad>.., real shapes captions of varied lengths."""
    encoded = [vocab.encode(text, max_length=max_length) for text in shapes_captions(count, seed)]
    captions = torch.full((count, max(map(len, encoded))), vocab.pad_id, dtype=torch.long)
    for row, ids in enumerate(encoded):
        captions[row, : len(ids)] = torch.tensor(ids)
    return captions


def make_model(config: Config, vocab: Vocabulary, seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    return Captioner(config.model, vocab)


def shapes_records(root: Path, num_train: int) -> list[ImageRecord]:
    """A small shapes dataset written under root (JPEG files, 64 px); returns its train records."""
    synthetic = SyntheticConfig(num_train=num_train, num_val=0, num_test=0, image_size=64, seed=0)
    data = DataConfig(format="shapes", root=str(root), min_word_count=1, synthetic=synthetic)
    return load_dataset(data, log=lambda message: None)["train"]
