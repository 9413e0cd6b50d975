"""Bidirectional StackedLSTM checks that complement tests/test_rnn_cells.py's oracle comparisons.

tests/test_rnn_cells.py already proves outputs, final states and every gradient against nn.LSTM/GRU/RNN (and the
equation references for peephole and coupled) for 1, 2 and 3 bidirectional layers. These tests add what an
oracle comparison cannot show by itself, for every cell: the reverse direction *is* a forward pass over the
reversed sequence, each direction sees only its own side of the sequence, and the edge cases T = 1,
dropout between bidirectional layers, and the (D*num_layers, B, H) state shape check.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from captioner.rnn.cells import CELLS
from captioner.rnn.stacked import StackedLSTM

ALL_CELLS = tuple(CELLS)
TORCH_ORACLES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _one_direction(module: StackedLSTM, direction: int) -> StackedLSTM:
    """A 1-layer unidirectional copy holding layer 0's weights of `direction` (0 forward, 1 reverse)."""
    single = StackedLSTM(module.input_size, module.hidden_size, 1, cell=module.cell).double()
    suffix = "_l0" + ("_reverse" if direction else "")
    weights = {name[: -len(suffix)] + "_l0": value
               for name, value in module.state_dict().items() if name.endswith(suffix)}
    single.load_state_dict(weights)
    return single


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_reverse_direction_is_a_forward_pass_over_the_flipped_sequence(cell):
    module = StackedLSTM(3, 4, 1, cell=cell, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    output, (h_n, c_n) = module(x, (h0, c0))  # (B, T, 2H), (2, B, H)
    forward, forward_state = _one_direction(module, 0)(x, (h0[:1], c0[:1]))
    backward, backward_state = _one_direction(module, 1)(x.flip(1), (h0[1:], c0[1:]))
    assert torch.allclose(output[..., :4], forward, atol=1e-12)
    assert torch.allclose(output[..., 4:], backward.flip(1), atol=1e-12)  # reversed back to input time order
    assert torch.allclose(h_n, torch.cat([forward_state[0], backward_state[0]]), atol=1e-12)
    assert torch.allclose(c_n, torch.cat([forward_state[1], backward_state[1]]), atol=1e-12)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_each_direction_sees_only_its_side_of_the_sequence(cell, num_layers):
    """Layer 1: forward h_t depends on x_1..x_t only, backward h_t on x_t..x_T only. Above layer 1 both
    halves see the whole sequence, because every layer reads both directions of the layer below."""
    module = StackedLSTM(3, 4, num_layers, cell=cell, bidirectional=True).double()
    T, t = 6, 2
    x = torch.randn(1, T, 3, dtype=torch.float64, requires_grad=True)
    output, _ = module(x)
    forward_gradient, = torch.autograd.grad(output[0, t, :4].sum(), x, retain_graph=True)
    backward_gradient, = torch.autograd.grad(output[0, t, 4:].sum(), x)
    reaches = lambda gradient: [bool(gradient[0, s].abs().sum() > 0) for s in range(T)]  # noqa: E731
    if num_layers == 1:
        assert reaches(forward_gradient) == [s <= t for s in range(T)]
        assert reaches(backward_gradient) == [s >= t for s in range(T)]
    else:
        assert all(reaches(forward_gradient)) and all(reaches(backward_gradient))


@pytest.mark.parametrize("cell", list(TORCH_ORACLES))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_single_step_sequence_matches_torch(cell, num_layers):
    oracle = TORCH_ORACLES[cell](3, 4, num_layers, batch_first=True, bidirectional=True)
    ours = StackedLSTM(3, 4, num_layers, cell=cell, bidirectional=True)
    ours.load_state_dict(oracle.state_dict())
    x = torch.randn(5, 1, 3)
    output, (h_n, _) = ours(x)
    expected, expected_state = oracle(x)
    expected_h = expected_state[0] if cell == "lstm" else expected_state
    assert (output - expected).abs().max() <= 1e-6 and (h_n - expected_h).abs().max() <= 1e-6
    assert torch.allclose(output[:, 0, :4], h_n[-2]) and torch.allclose(output[:, 0, 4:], h_n[-1])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_between_bidirectional_layers(cell):
    module = StackedLSTM(3, 5, 2, cell=cell, dropout=0.5, bidirectional=True)
    plain = StackedLSTM(3, 5, 2, cell=cell, dropout=0.0, bidirectional=True)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(4, 6, 3)
    assert not torch.allclose(module.train()(x)[0], module(x)[0]), "training runs should differ"
    assert torch.equal(module.eval()(x)[0], plain(x)[0])


def test_bidirectional_state_needs_two_rows_per_layer():
    module = StackedLSTM(3, 4, 2, bidirectional=True)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"state h must have shape \(4, 2, 4\) = \(D\*num_layers, B, H\)"):
        module(x, (torch.zeros(2, 2, 4), torch.zeros(4, 2, 4)))
    output, (h_n, c_n) = module(x, (torch.zeros(4, 2, 4), torch.zeros(4, 2, 4)))
    assert output.shape == (2, 5, 8) and h_n.shape == c_n.shape == (4, 2, 4)
