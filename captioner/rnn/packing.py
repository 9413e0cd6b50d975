"""Captions of different lengths without work on padding: torch's `PackedSequence` layout.

A batch of B captions padded to T steps holds B*T positions; on the shapes data only 61 % of them are
words (a one-shape caption has 5, a three-shape one up to 19). Packed, the N real positions are stored
time-major, and within a step the rows run by decreasing length, so step t holds the first
batch_sizes[t] rows and a caption leaves the batch after its last word: exactly what `nn.LSTM` reads
from `torch.nn.utils.rnn.pack_padded_sequence`. `StackedLSTM` takes the same `PackedSequence`, and
`Packing` packs the decoders' other per-word tensors (embeddings, queries, logits) in that layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


@dataclass(frozen=True)
class Packing:
    """Where each of the N real positions of a padded (B, T) batch goes in the packed layout."""

    batch_sizes: Tensor  # (T,) int64 on the CPU: rows still running at each step, as PackedSequence's
    sorted_indices: Tensor  # (B,) packed row r is padded row sorted_indices[r]
    unsorted_indices: Tensor  # (B,) its inverse
    positions: Tensor  # (N,) b * T + t of each packed entry, in the padded batch flattened to (B*T, ...)
    steps: int  # T

    @classmethod
    def from_lengths(cls, lengths: Tensor, steps: int) -> "Packing":
        """lengths (B,) of real positions per row, each in [1, steps]; the indices live on lengths' device."""
        device, lengths = lengths.device, lengths.to("cpu", torch.int64)
        sorted_lengths, sorted_indices = torch.sort(lengths, descending=True, stable=True)
        time = torch.arange(steps).unsqueeze(1)  # (T, 1)
        running = time < sorted_lengths.unsqueeze(0)  # (T, B) is packed row r still running at step t?
        positions = (sorted_indices.unsqueeze(0) * steps + time)[running]  # time-major, rows by length
        return cls(running.sum(dim=1), sorted_indices.to(device), torch.argsort(sorted_indices).to(device),
                   positions.to(device), steps)

    def pack(self, padded: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...): the real positions, in the packed order."""
        return padded.flatten(0, 1).index_select(0, self.positions)

    def sequence(self, packed: Tensor) -> PackedSequence:
        """Packed rows (N, E) -> the PackedSequence StackedLSTM (and nn.LSTM) read."""
        return PackedSequence(packed, self.batch_sizes, self.sorted_indices, self.unsorted_indices)

    def unpack(self, packed: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padded positions."""
        B = self.sorted_indices.numel()
        padded = packed.new_zeros(B * self.steps, *packed.shape[1:])
        return padded.index_copy(0, self.positions, packed).view(B, self.steps, *packed.shape[1:])


def reversed_order(batch_sizes: tuple[int, ...], device: torch.device) -> Tensor:
    """(N,) the packed entries of every row read backwards within its own length: data[order] is the
    packing of the reversed rows (the second direction of a bidirectional layer), and since reversing
    twice is the identity, output[order] puts the result back. A dense batch: the steps flipped."""
    return _reversed_order(batch_sizes).to(device)


@lru_cache(maxsize=64)
def _reversed_order(batch_sizes: tuple[int, ...]) -> Tensor:
    sizes = torch.tensor(batch_sizes)
    starts = torch.cumsum(sizes, 0) - sizes  # (T,) first packed entry of each step
    lengths = (sizes.unsqueeze(1) > torch.arange(batch_sizes[0])).sum(dim=0)  # (B,) steps each row runs
    time = torch.repeat_interleave(torch.arange(len(batch_sizes)), sizes)  # (N,) step of each entry
    row = torch.arange(int(sizes.sum())) - starts[time]  # (N,) its row
    return starts[lengths[row] - 1 - time] + row  # (N,) the entry of the same row at step len - 1 - t
