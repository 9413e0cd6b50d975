"""Captions of different lengths: StackedLSTM reads torch's PackedSequence as nn.LSTM does on its readable
cells and in the packed layer Function (the fast path's oracle test on packed input is in test_rnn_fused.py),
and `Packing` packs and unpacks the decoders' tensors."""
from __future__ import annotations

import pytest
import torch
from test_rnn_cells import SHAPES, _assert_close, _inputs, _lengths, _run_and_grad, _run_packed
from test_rnn_fused import SHAPE_IDS
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from captioner.rnn import fused
from captioner.rnn.packing import Packing, reversed_order
from captioner.rnn.stacked import StackedLSTM

ORACLES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("shape", SHAPES[2:5], ids=SHAPE_IDS[2:5])
def test_readable_cells_on_packed_captions_match_torch(cell, shape):
    B, T, E, H, L, bidirectional, with_state = shape
    oracle = ORACLES[cell](E, H, L, batch_first=True, bidirectional=bidirectional)
    ours = StackedLSTM(E, H, L, bidirectional=bidirectional, cell=cell, fast=False)
    ours.load_state_dict(oracle.state_dict())
    x, state = _inputs(B, T, E, H, L, bidirectional, with_state)
    lengths = _lengths(B, T)
    our_values, our_grads = _run_and_grad(ours, x, state, _run_packed(ours, lengths))
    reference_values, reference_grads = _run_and_grad(oracle, x, state, _run_packed(oracle, lengths, cell))
    if cell != "lstm":  # no cell state: c_n is zeros on our side, and c_0 has no gradient on either
        our_values, reference_values = our_values[:2], reference_values[:2]
        our_grads.pop("c0", None)
        reference_grads.pop("c0", None)
    _assert_close(dict(enumerate(our_values)), dict(enumerate(reference_values)), 1e-5, f"{cell} values")
    _assert_close(our_grads, reference_grads, 1e-5, f"{cell} gradients")


@pytest.mark.parametrize("batch_sizes", [(3, 3, 3, 3), (3, 3, 2, 1), (3, 1)])
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_layer_function_passes_gradcheck(batch_sizes, with_state):
    B, E, H = batch_sizes[0], 5, 4
    x = torch.randn(sum(batch_sizes), E, dtype=torch.float64, requires_grad=True)
    weights = [(torch.randn(shape, dtype=torch.float64) * 0.5).requires_grad_()
               for shape in [(4 * H, E), (4 * H, H), (4 * H,), (4 * H,)]]
    state = [None, None]
    if with_state:
        state = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def run(x, *rest):
        return fused.LSTMLayerFunction.apply(x, batch_sizes, *rest)
    assert torch.autograd.gradcheck(run, (x, *weights, *state), eps=1e-6, atol=1e-7)


def test_packing_round_trip_matches_torch_layout():
    B, T = 5, 7
    lengths = _lengths(B, T)
    padded = torch.randn(B, T, 3)
    packing = Packing.from_lengths(lengths, T)
    reference = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
    packed = packing.sequence(packing.pack(padded))
    assert torch.equal(packed.data, reference.data) and torch.equal(packed.batch_sizes, reference.batch_sizes)
    assert torch.equal(packed.sorted_indices, reference.sorted_indices)
    mask = torch.arange(T) < lengths.unsqueeze(1)  # (B, T) real positions
    assert torch.equal(packing.unpack(packed.data), padded * mask.unsqueeze(-1))


def test_reversed_order_reads_each_row_backwards():
    lengths = torch.tensor([4, 2, 3])
    padded = torch.arange(3 * 4).view(3, 4, 1).float()
    packing = Packing.from_lengths(lengths, 4)
    order = reversed_order(tuple(packing.batch_sizes.tolist()), torch.device("cpu"))
    reversed_rows = packing.unpack(packing.pack(padded)[order])[..., 0]
    assert reversed_rows.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0], [10, 9, 8, 0]]
    assert torch.equal(order[order], torch.arange(order.numel())), "reversing twice is the identity"
