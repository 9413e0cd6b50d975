"""Left-right flips as data augmentation, with the captions kept true.

A mirrored photo is as good a training example as the original, once its captions say "right" where
they said "left". `flip_batch` mirrors a random half of a batch's images and swaps those two words in
their captions. It works on what a training step sees:
- pixels (B, 3, S, S): the image itself is mirrored;
- cached region features (B, L, C) of an h x h map: the map is mirrored cell by cell. An ImageNet CNN
  was trained with random flips, so the features of a mirrored photo are close to the mirrored
  features of the photo, and the cache needs no second entry per image.
Pooled features (B, F) have no left and right to flip.
"""
from __future__ import annotations

import math

import torch

from captioner.vocab import Vocabulary

MIRRORED_WORDS = (("left", "right"),)


def flip_batch(inputs: torch.Tensor, captions: torch.Tensor, captions_per_image: int, vocab: Vocabulary,
               probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror each image with `probability` (torch's global RNG, so a resumed run repeats it); captions
    (B*C, L) rows b*C .. b*C+C-1 belong to image b. Returns new tensors; the inputs are not modified."""
    flipped = torch.rand(inputs.size(0)) < probability  # (B,)
    if not flipped.any():
        return inputs, captions
    inputs = torch.where(flipped.view(-1, *[1] * (inputs.dim() - 1)).to(inputs.device), mirror(inputs), inputs)
    rows = flipped.repeat_interleave(captions_per_image).to(captions.device)  # (B*C,)
    return inputs, torch.where(rows.unsqueeze(1), swap_words(captions, vocab), captions)


def mirror(inputs: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, S, S) or regions (B, h*h, C) of a square map -> the same, left and right exchanged."""
    if inputs.dim() == 4:
        return inputs.flip(-1)
    if inputs.dim() != 3:
        raise ValueError(f"train.flip_probability: cannot mirror pooled features of shape {tuple(inputs.shape)}; "
                         "use model.attention=true (a feature map) or an encoder that is not cached")
    B, L, C = inputs.shape
    side = math.isqrt(L)
    if side * side != L:
        raise ValueError(f"train.flip_probability: {L} regions are not a square map")
    return inputs.view(B, side, side, C).flip(2).reshape(B, L, C)  # (B, h, w, C) with w reversed


def swap_words(captions: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Token ids (N, L) with every "left" made "right" and back (words missing from the vocabulary are skipped)."""
    swapped = captions.clone()
    for first, second in MIRRORED_WORDS:
        if first in vocab and second in vocab:
            a, b = vocab.word_id(first), vocab.word_id(second)
            swapped[captions == a], swapped[captions == b] = b, a
    return swapped
