"""What a training run feeds the model for a list of images: the frozen encoder's cached features when
the encoder is fully frozen (each image encoded once, to disk), else preprocessed pixels, kept in memory
while they fit (BANK_BUDGET_BYTES per machine) and read from disk per batch when they do not; and
`check_splits`, the splits a run needs images in.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from captioner import distributed
from captioner.config import Config
from captioner.data.batches import build_image_bank
from captioner.data.feature_cache import FeatureCache, StoredFeatures, feature_cache_directory
from captioner.data.records import DatasetFormatError, ImageRecord
from captioner.encoders.backbones import Encoder

BANK_BUDGET_BYTES = 4 << 30  # keep preprocessed pixels in memory up to this size per machine, else stream

Inputs = StoredFeatures | torch.Tensor | None  # cached features, a pixel bank, or None: decode per batch


class RunInputs:
    """The inputs of one run's splits; `cached` says which kind they are."""

    def __init__(self, config: Config, encoder: Encoder, cluster: distributed.Cluster, log: Callable[[str], None]) -> None:
        self.encoder, self.cluster, self.log = encoder, cluster, log
        data = config.data
        use_cache = data.feature_cache and encoder.fully_frozen
        self.feature_cache = FeatureCache(feature_cache_directory(data), encoder, data.feature_dtype,
                                          config.eval.batch_size, log=log) if use_cache else None

    @property
    def cached(self) -> bool:
        return self.feature_cache is not None

    def of(self, records: Sequence[ImageRecord]) -> Inputs:
        """What the model reads for `records`: cached features (frozen encoder), else preprocessed pixels."""
        return self.stored_features(records) if self.cached else self.pixels(records)

    def stored_features(self, records: Sequence[ImageRecord]) -> StoredFeatures:
        """Cached features of `records`; rank 0 encodes missing images first, the other ranks then read its shards."""
        with distributed.main_first(self.cluster):
            return self.feature_cache.features(records)

    def pixels(self, records: Sequence[ImageRecord]) -> torch.Tensor | None:
        """Preprocessed uint8 pixels when they fit in memory, else None (read from disk per batch)."""
        side = self.encoder.preprocessing.image_size
        if len(records) * 3 * side * side > BANK_BUDGET_BYTES // self.cluster.local_world_size:  # ranks share RAM
            return None
        started = time.perf_counter()
        bank = build_image_bank(records, self.encoder.preprocess)
        self.log(f"preprocessed {len(records)} images in {time.perf_counter() - started:.1f}s")
        return bank

    def for_evaluation(self, inputs: Inputs) -> dict[str, Any]:
        """`inputs` (from `of()`) as the keyword `evaluate` expects: cached features or pixels."""
        return {"features": inputs} if self.cached else {"pixels": inputs}


def check_splits(splits: dict[str, list], root: str) -> None:
    """Training needs train images, and val images to choose best.pt on: choosing it on the test split
    would report a score the selection has already seen."""
    for split, role in (("train", "to train on"), ("val", "to choose best.pt on (never the test split)")):
        if not splits[split]:
            raise DatasetFormatError(f"data.root={root}: the {split} split is empty; it needs images {role}. "
                                     "Give some images that split, or leave out a folder CSV's split column "
                                     "for a seeded random split")

