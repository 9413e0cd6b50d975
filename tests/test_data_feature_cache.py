"""Feature cache (captioner/data/feature_cache.py) and fine-tuning: built once and reused, invalidated by a change of
preprocessing, weights or image file, rebuilt when damaged; training on cached features is the same
computation as running the frozen encoder; fine-tuned blocks get their own parameter group.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from captioner.config import ConfigError, load_config
from captioner.data.feature_cache import FeatureCache
from captioner.data.records import ImageRecord
from captioner.encoders.backbones import Encoder, EncoderError, Preprocessing, build_encoder

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]


def write_images(folder: Path, count: int = 5) -> list[ImageRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        path = folder / f"{index}.png"
        image = Image.new("RGB", (80, 64), COLORS[index % len(COLORS)])
        image.paste(COLORS[(index + 3) % len(COLORS)], (index * 8, 10, index * 8 + 30, 40))  # distinct layouts
        image.save(path)
        records.append(ImageRecord(f"{index}.png", str(path), ("a caption",), "train"))
    return records


class CountingEncoder:
    """Wraps an encoder's forward to count how many images it encodes."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder, self.images = encoder, 0
        forward = encoder.forward

        def counting(pixels: torch.Tensor) -> torch.Tensor:
            self.images += pixels.size(0)
            return forward(pixels)

        encoder.forward = counting


def small_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder("small_cnn").eval()


def direct_features(encoder: Encoder, records: list[ImageRecord]) -> torch.Tensor:
    from captioner.data.batches import build_image_bank

    with torch.no_grad():  # the class's forward: a CountingEncoder wrapper does not count this reference
        return type(encoder).forward(encoder.eval(), build_image_bank(records, encoder.preprocess))  # (N, F)


def quiet(message: str) -> None:
    pass


def test_cache_is_built_once_then_read_without_the_encoder(tmp_path):
    records = write_images(tmp_path / "images")
    encoder = small_encoder()
    counter = CountingEncoder(encoder)
    first = FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    assert counter.images == len(records)
    torch.testing.assert_close(first[:], direct_features(encoder, records))
    second = FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records[::-1] + records[:1])
    assert counter.images == len(records)  # nothing encoded the second time
    torch.testing.assert_close(second[0], first[len(records) - 1], rtol=0, atol=0)
    assert len(second) == len(records) + 1


def test_changed_preprocessing_or_weights_is_a_cache_miss(tmp_path):
    records = write_images(tmp_path / "images", 3)
    encoder = small_encoder()
    FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    spec = encoder.preprocessing
    resized = Encoder(encoder.backbone, encoder.feature_dim, Preprocessing(spec.image_size, spec.resize_size + 8,
                                                                           spec.mean, spec.std), encoder.name)
    counter = CountingEncoder(resized)
    features = FeatureCache(tmp_path / "cache", resized, log=quiet).features(records)
    assert counter.images == 3
    torch.testing.assert_close(features[:], direct_features(resized, records))
    with torch.no_grad():
        encoder.backbone.blocks[0].weight[0, 0, 0, 0] += 0.5  # one weight changes
    counter = CountingEncoder(encoder)
    features = FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    assert counter.images == 3
    torch.testing.assert_close(features[:], direct_features(encoder, records))
    assert len(list((tmp_path / "cache").iterdir())) == 3  # one directory per encoder identity


def test_stretch_keeps_what_the_crop_cuts_off_and_has_its_own_cache(tmp_path):
    image = Image.new("RGB", (128, 64), "white")
    image.paste("blue", (0, 0, 16, 64))  # a stripe at the far left
    cropped, stretched = (build_encoder("small_cnn", image_fit=fit) for fit in ("crop", "stretch"))
    assert not (cropped.preprocess(image)[0] < 50).any()  # the centre 64x64 square has no blue (red channel low)
    assert (stretched.preprocess(image)[0, :, :6] < 50).all()  # squeezed to 8 px wide, still there
    records = write_images(tmp_path / "images", 2)
    for encoder in (cropped, stretched):
        FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # (a bad model.image_fit: refused at load, test_config)


def test_a_larger_input_size_scales_the_resize_grows_the_map_and_has_its_own_cache(tmp_path):
    own, larger = (build_encoder("efficientnet_lite0", image_size=size) for size in (0, 288))
    assert (own.preprocessing.image_size, own.preprocessing.resize_size) == (224, 224)
    assert (larger.preprocessing.image_size, larger.preprocessing.resize_size) == (288, 288)
    assert larger.preprocess(Image.new("RGB", (400, 300))).shape == (3, 288, 288)
    assert (own.use_regions(), own.num_regions, larger.use_regions(), larger.num_regions) == (1280, 49, 1280, 81)
    resnet = build_encoder("resnet18", image_size=448).preprocessing
    assert (resnet.image_size, resnet.resize_size) == (448, 512)  # torchvision's 256/224 ratio kept
    keys = {FeatureCache(tmp_path / "cache", encoder, log=quiet).key for encoder in (own, larger)}
    assert len(keys) == 2
    for size, fragment in ((-1, "expected 0"), (96, "small_cnn takes 64 only")):
        with pytest.raises(EncoderError, match=f"model.image_size={size}: .*{fragment}"):
            build_encoder("small_cnn", image_size=size)


def test_changed_image_file_is_encoded_again_alone(tmp_path):
    records = write_images(tmp_path / "images", 4)
    encoder = small_encoder()
    before = FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)[:]
    changed = Path(records[2].path)
    Image.new("RGB", (80, 64), "pink").save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    counter = CountingEncoder(encoder)
    after = FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)[:]
    assert counter.images == 1
    torch.testing.assert_close(after, direct_features(encoder, records))
    assert not torch.equal(after[2], before[2])
    torch.testing.assert_close(after[[0, 1, 3]], before[[0, 1, 3]], rtol=0, atol=0)


def flip_last_byte(directory: Path) -> None:
    array_path = next(directory.glob("*/shard-*.npy"))
    data = bytearray(array_path.read_bytes())
    data[-1] ^= 0xFF
    array_path.write_bytes(bytes(data))


def truncate_manifest(directory: Path) -> None:
    manifest = next(directory.glob("*/shard-*.json"))
    manifest.write_text(manifest.read_text()[:20])


def remove_manifest(directory: Path) -> None:  # as after a crash between the two writes
    next(directory.glob("*/shard-*.json")).unlink()


@pytest.mark.parametrize("damage", [flip_last_byte, truncate_manifest, remove_manifest])
def test_damaged_or_partial_cache_is_rebuilt(tmp_path, damage):
    records = write_images(tmp_path / "images", 3)
    encoder = small_encoder()
    FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    damage(tmp_path / "cache")
    counter, messages = CountingEncoder(encoder), []
    features = FeatureCache(tmp_path / "cache", encoder, log=messages.append).features(records)
    assert counter.images == 3
    torch.testing.assert_close(features[:], direct_features(encoder, records))
    if damage is not remove_manifest:
        assert any("damaged" in message for message in messages), messages
    counter.images = 0
    FeatureCache(tmp_path / "cache", encoder, log=quiet).features(records)
    assert counter.images == 0  # the rebuilt shard is intact


def test_float16_storage_halves_the_bytes_and_rounds_only(tmp_path):
    records = write_images(tmp_path / "images", 3)
    encoder = small_encoder()
    half = FeatureCache(tmp_path / "cache", encoder, dtype="float16", log=quiet).features(records)
    array_path = next((tmp_path / "cache").glob("*/shard-*.npy"))
    assert np.load(array_path).dtype == np.float16
    torch.testing.assert_close(half[:], direct_features(encoder, records), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- training through the cache


def folder_dataset(root: Path, count: int = 12) -> Path:
    records = write_images(root / "images", count)
    words = ["red", "green", "blue", "square", "circle", "big", "small"]
    lines = ["image,caption,split"]
    for index, record in enumerate(records):
        split = "train" if index < count - 4 else "val"
        for shift in range(2):
            lines.append(f"{record.image_id},a {words[(index + shift) % 7]} {words[(index * 3) % 7]} thing,{split}")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root


def make_trainer(tmp_path: Path, name: str, *overrides: str):
    from captioner.training.trainer import Trainer

    config = load_config(REPO / "configs/shapes.yaml", [
        f"data.root={tmp_path / 'data'}", "data.format=folder", "data.min_word_count=1", f"run_dir={tmp_path / name}",
        f"data.feature_cache_dir={tmp_path / 'cache'}", "model.freeze_encoder=true", "model.embed_size=16",
        "model.hidden_size=24", "model.dropout=0.0", "train.batch_size=4", "train.captions_per_image=2",
        "train.warmup_steps=1", "train.threads=1", *overrides])
    return Trainer(config, log=quiet)


def first_batch(trainer):
    from captioner.data.batches import epoch_batches, make_loader

    dataset = trainer.training_data()
    batches = epoch_batches(len(dataset), 4, 0, 0)
    return next(iter(make_loader(dataset, batches, trainer.vocab.pad_id, 0, False)))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("decoder", ["model.attention=false", "model.attention=false model.image_as=initial_state",
                                     "model.attention=true",
                                     "model.attention=true model.attention_query=current model.attention_size=8"])
def test_training_step_on_cached_features_equals_running_the_frozen_encoder(tmp_path, decoder):
    folder_dataset(tmp_path / "data")
    cached = make_trainer(tmp_path, "cached", *decoder.split())
    on_the_fly = make_trainer(tmp_path, "pixels", *decoder.split(), "data.feature_cache=false")
    assert cached.inputs.cached and not on_the_fly.inputs.cached
    on_the_fly.model.load_state_dict(cached.model.state_dict())
    features, captions = first_batch(cached)
    pixels, same_captions = first_batch(on_the_fly)
    cnn = cached.model.encoder.backbone
    pooled, regions = (4, cnn.feature_dim), (4, 16, cnn.map_channels)  # attention: one feature per 4x4 map cell
    assert tuple(features.shape) == (regions if cached.config.model.attention else pooled)
    assert torch.equal(captions, same_captions) and pixels.dtype == torch.uint8
    with torch.no_grad():
        torch.testing.assert_close(features, on_the_fly.model.encoder(pixels))  # the features are identical
    for trainer in (cached, on_the_fly):  # compare gradients, not Adam's steps: Adam would blow the rounding
        trainer.optimizer.step = lambda: None  # noise of a near-zero gradient up to a whole ±lr step
    losses = [trainer.train_step(inputs, captions) for trainer, inputs in ((cached, features), (on_the_fly, pixels))]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    gradients = [{name: p.grad for name, p in trainer.model.named_parameters() if p.requires_grad}
                 for trainer in (cached, on_the_fly)]
    assert gradients[0].keys() == gradients[1].keys() and all(g is not None for g in gradients[0].values())
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradient, gradients[1][name], rtol=1e-4, atol=1e-6, msg=name)
    encoder_before = cached.model.encoder.state_dict()
    assert all(torch.equal(value, encoder_before[key]) for key, value in on_the_fly.model.encoder.state_dict().items())


def test_fit_with_the_cache_never_calls_the_encoder_after_caching(tmp_path):
    folder_dataset(tmp_path / "data")
    trainer = make_trainer(tmp_path, "run", "train.epochs=2")
    counter = CountingEncoder(trainer.model.encoder)
    metrics = trainer.fit()
    assert counter.images == 12  # 8 train + 4 val images, each encoded once for two epochs and the test
    assert metrics["split"] == "val" and len(metrics["history"]) == 2


def test_fine_tuning_trains_the_last_blocks_at_their_own_rate(tmp_path):
    folder_dataset(tmp_path / "data")
    trainer = make_trainer(tmp_path, "finetune", "model.finetune_blocks=2", "train.learning_rate=0.01",
                           "train.encoder_learning_rate=0.001")
    assert not trainer.inputs.cached  # fine-tuning bypasses the cache
    encoder = trainer.model.encoder
    tuned = {id(p) for block in encoder.blocks[-2:] for p in block.parameters()}
    groups = trainer.optimizer.param_groups
    assert [group["initial_lr"] for group in groups] == [0.01, 0.001]
    assert {id(p) for p in groups[1]["params"]} == tuned
    assert not any(id(p) in tuned for p in groups[0]["params"])
    frozen_conv = encoder.blocks[0]
    trainer.model.train()
    assert not frozen_conv.training and not encoder.blocks[1].training and encoder.blocks[-1].training
    frozen_before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    trainer.train_step(*first_batch(trainer))
    after = encoder.backbone.state_dict()
    changed = {key for key in after if not torch.equal(after[key], frozen_before[key])}
    # SmallCNN's last two blocks are its last conv (blocks.12) and BatchNorm (blocks.13)
    assert changed and all(key.startswith(("blocks.12.", "blocks.13.")) for key in changed), changed
    assert "blocks.13.running_mean" in changed and "blocks.9.running_mean" not in changed  # frozen BN stays in eval


def test_efficientnet_fine_tuning_units_and_bad_settings():
    from captioner.config import Config
    from captioner.model import Captioner
    from captioner.vocab import Vocabulary

    config = Config()
    config.model.backbone, config.model.freeze_encoder, config.model.finetune_blocks = "efficientnet_lite0", True, 1
    model = Captioner(config.model, Vocabulary.build(["a cat"], min_count=1))
    network = model.encoder.backbone[0].network
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("_blocks.15.", "_conv_head", "_bn1")) for name in trainable), trainable
    assert not network._fc.weight.requires_grad
    config.model.finetune_blocks = 17
    with pytest.raises(EncoderError, match="model.finetune_blocks=17: efficientnet_lite0 has 16 blocks"):
        Captioner(config.model, Vocabulary.build(["a cat"], min_count=1))
    config.model.freeze_encoder, config.model.finetune_blocks = False, 2
    with pytest.raises(ConfigError, match="needs model.freeze_encoder=true"):
        Captioner(config.model, Vocabulary.build(["a cat"], min_count=1))
