"""Training batches: B images, each with `captions_per_image` of its reference captions.

Encoding an image once for several captions (neuraltalk2's seq_per_img) cuts the CNN's share of a
training step by that factor. The order of images and the choice of captions are pure functions of
(seed, epoch, image index), so a resumed run sees exactly the batches an uninterrupted run would.

Images are preprocessed once into a uint8 bank in memory when they fit in `memory_budget` bytes,
else read from disk by DataLoader workers; both give the same tensors.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from captioner.data.records import ImageRecord
from captioner.images import ImageError, load_image
from captioner.vocab import Vocabulary

Preprocess = Callable[[Image.Image], torch.Tensor]


def preprocess_file(record: ImageRecord, preprocess: Preprocess) -> torch.Tensor:
    """The one path from an image file to a model input: safe load, then the encoder's transform."""
    return preprocess(load_image(record.path))


def build_image_bank(records: Sequence[ImageRecord], preprocess: Preprocess, threads: int = 4) -> torch.Tensor:
    """All images preprocessed once: uint8 (N, 3, S, S)."""
    with ThreadPoolExecutor(threads) as pool:  # PIL decodes and resizes with the GIL released
        return torch.stack(list(pool.map(lambda record: preprocess_file(record, preprocess), records)))


class CaptionedImages(Dataset):
    """Item i of epoch e: (pixels uint8 (3, S, S), a fixed-size choice of image i's encoded captions).
    With a frozen encoder, `bank` holds cached features instead and item i starts with image i's feature."""

    def __init__(self, records: Sequence[ImageRecord], vocab: Vocabulary, preprocess: Preprocess,
                 max_length: int, captions_per_image: int, seed: int,
                 bank: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        self.records = records
        self.captions = [[vocab.encode(text, max_length=max_length) for text in r.captions] for r in records]
        self.preprocess = preprocess
        self.captions_per_image = captions_per_image
        self.seed = seed
        self.bank = bank
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[list[int]]]:
        if self.bank is not None:
            return self.bank[index], self.choose_captions(index)
        record = self.records[index]
        try:  # in a DataLoader worker the traceback is lost; the message must say which sample and file
            pixels = preprocess_file(record, self.preprocess)
        except ImageError as error:
            raise ImageError(f"training sample {index} (image {record.image_id}, file {record.path}): {error}") from None
        return pixels, self.choose_captions(index)

    def choose_captions(self, index: int) -> list[list[int]]:
        """captions_per_image captions: a shuffled pass over the references, repeated if there are few."""
        chooser = random.Random(self.seed * 1_000_003 + self.epoch * 10_007 + index)
        available = self.captions[index]
        order: list[int] = []
        while len(order) < self.captions_per_image:
            order += chooser.sample(range(len(available)), len(available))
        return [available[k] for k in order[: self.captions_per_image]]


def collate(items: list[tuple[torch.Tensor, list[list[int]]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> pixels (B, 3, S, S) and captions (B*C, L) padded; rows b*C .. b*C+C-1 belong to image b."""
    pixels = torch.stack([item[0] for item in items])
    return pixels, pad_sequences([caption for item in items for caption in item[1]], pad_id)


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Token lists -> (N, longest) long tensor, each row padded on the right with pad_id."""
    padded = torch.full((len(sequences), max(map(len, sequences))), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return padded


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The image order of one epoch, cut into batches (the last one may be smaller)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, num_items, batch_size)]


def make_loader(dataset: CaptionedImages, batches: list[list[int]], pad_id: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    # A private generator: without one, every new loader draws its workers' base seed from the global
    # RNG, so a run resumed mid-epoch (one extra loader) would get different dropout masks afterwards.
    generator = torch.Generator().manual_seed(dataset.seed * 1_000_003 + dataset.epoch)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      collate_fn=Collate(pad_id), timeout=300 if num_workers else 0, generator=generator)


class Collate:
    """Picklable collate function, so DataLoader worker processes can use it."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[torch.Tensor, list[list[int]]]]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(items, self.pad_id)
