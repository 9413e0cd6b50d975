"""Proves captioner/rnn/cells.py's hand-written cells against trusted oracles.

lstm, gru and rnn are checked against torch's nn.LSTM / nn.GRU / nn.RNN after copying weights both ways
(outputs, final states and every gradient). peephole and coupled, which torch lacks, are checked against
slow references written straight from the equations below (per-step loops, one matrix per gate).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from captioner.rnn.cells import detach_state
from captioner.rnn.stacked import StackedLSTM

TORCH_ORACLES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
ALL_CELLS = ("rnn", "lstm", "peephole", "coupled", "gru")
# (B, T, input_size, H, num_layers, bidirectional, given initial state)
SHAPES = [
    (1, 1, 3, 4, 1, False, False),
    (3, 5, 4, 6, 1, False, True),
    (2, 4, 5, 3, 2, False, True),
    (4, 3, 6, 5, 3, False, False),
    (2, 6, 3, 4, 1, True, True),
    (3, 4, 5, 4, 2, True, False),
    (2, 3, 4, 3, 3, True, True),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(B, T, E, H, L, bidirectional, with_state, dtype=torch.float32):
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, E, dtype=dtype, requires_grad=True)
    if not with_state:
        return x, None
    h0 = torch.randn(D * L, B, H, dtype=dtype, requires_grad=True)
    c0 = torch.randn(D * L, B, H, dtype=dtype, requires_grad=True)
    return x, (h0, c0)


def _loss(output, h_n, c_n, seed=1):
    """A weighted sum, so every output element and state gets its own gradient."""
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in (output, h_n, c_n)]
    return sum((t * w).sum() for t, w in zip((output, h_n, c_n), weights))


def _run_and_grad(module, x, state, run):
    """Forward with `run`, backward a fixed loss; returns values and gradients (params, x, h0, c0)."""
    module.zero_grad()
    for tensor in [x] + list(state or []):
        tensor.grad = None
    output, h_n, c_n = run(x, state)
    _loss(output, h_n, c_n).backward()
    gradients = {name: p.grad.clone() for name, p in module.named_parameters()}
    gradients["x"] = x.grad.clone()
    if state is not None:
        gradients["h0"] = state[0].grad.clone()
        if state[1].grad is not None:
            gradients["c0"] = state[1].grad.clone()
    return (output.detach(), h_n.detach(), c_n.detach()), gradients


def _run_ours(module):
    def run(x, state):
        output, (h_n, c_n) = module(x, state)
        return output, h_n, c_n
    return run


def _run_torch(module, cell):
    def run(x, state):
        if cell == "lstm":
            output, (h_n, c_n) = module(x, state)
            return output, h_n, c_n
        output, h_n = module(x, None if state is None else state[0])
        return output, h_n, torch.zeros_like(h_n)  # our documented c_n for cells without cell state
    return run


def _lengths(B: int, T: int) -> torch.Tensor:
    """Unsorted lengths in [1, T], the longest equal to T (as in a padded caption batch)."""
    lengths = torch.randint(1, T + 1, (B,))
    lengths[torch.randint(0, B, (1,))] = T
    return lengths


def _run_packed(module, lengths, cell="lstm"):
    """Pack x by lengths (unsorted), run, and return (padded output, h_n, c_n) in the caller's row order."""
    def run(x, state):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        if isinstance(module, StackedLSTM) or cell == "lstm":
            output, (h_n, c_n) = module(packed, state)
        else:
            output, h_n = module(packed, None if state is None else state[0])
            c_n = torch.zeros_like(h_n)
        return pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])[0], h_n, c_n
    return run


def _assert_close(ours, reference, atol, what):
    for key in reference:
        difference = (ours[key] - reference[key]).abs().max().item()
        assert difference <= atol, f"{what}: {key} differs by {difference:.2e}"


@pytest.mark.parametrize("cell", list(TORCH_ORACLES))
def test_state_dict_matches_torch_exactly(cell):
    for L, bidirectional in [(1, False), (3, False), (2, True)]:
        ours = StackedLSTM(5, 7, L, cell=cell, bidirectional=bidirectional)
        oracle = TORCH_ORACLES[cell](5, 7, L, batch_first=True, bidirectional=bidirectional)
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
               {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
        assert list(ours.state_dict()) == list(oracle.state_dict())


@pytest.mark.parametrize("cell", list(TORCH_ORACLES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}E{}H{}L{}{}{}".format(
    *s[:5], "bi" if s[5] else "", "state" if s[6] else ""))
def test_matches_torch_values_and_every_gradient(cell, shape):
    B, T, E, H, L, bidirectional, with_state = shape
    oracle = TORCH_ORACLES[cell](E, H, L, batch_first=True, bidirectional=bidirectional)
    ours = StackedLSTM(E, H, L, cell=cell, bidirectional=bidirectional)
    ours.load_state_dict(oracle.state_dict())  # torch -> ours
    x, state = _inputs(B, T, E, H, L, bidirectional, with_state)
    reference_values, reference_grads = _run_and_grad(oracle, x, state, _run_torch(oracle, cell))
    our_values, our_grads = _run_and_grad(ours, x, state, _run_ours(ours))
    D = 2 if bidirectional else 1
    assert our_values[0].shape == (B, T, D * H) and our_values[1].shape == (D * L, B, H)
    _assert_close(dict(enumerate(our_values)), dict(enumerate(reference_values)), 1e-5, f"{cell} values")
    _assert_close(our_grads, reference_grads, 1e-5, f"{cell} gradients")
    assert set(our_grads) >= {name for name, _ in ours.named_parameters()} | {"x"}


@pytest.mark.parametrize("cell", list(TORCH_ORACLES))
def test_weights_move_from_ours_into_torch(cell):
    ours = StackedLSTM(4, 5, 2, cell=cell, bidirectional=True)
    oracle = TORCH_ORACLES[cell](4, 5, 2, batch_first=True, bidirectional=True)
    oracle.load_state_dict(ours.state_dict())  # ours -> torch
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        expected = _run_torch(oracle, cell)(x, None)
        got = _run_ours(ours)(x, None)
    for ours_tensor, oracle_tensor in zip(got, expected):
        assert (ours_tensor - oracle_tensor).abs().max() <= 1e-5


def _reference_step(cell, x, h, c, p):
    """One step straight from the equations, a separate matrix per gate, no fused matmul."""
    def affine(gate):  # W_x x_t + W_h h_{t-1} + b for one gate
        rows = slice(gate * p["H"], (gate + 1) * p["H"])
        return x @ p["weight_ih"][rows].T + h @ p["weight_hh"][rows].T + p["bias_ih"][rows] + p["bias_hh"][rows]
    if cell == "peephole":
        i = torch.sigmoid(affine(0) + p["weight_ci"] * c)
        f = torch.sigmoid(affine(1) + p["weight_cf"] * c)
        g = torch.tanh(affine(2))
        c = f * c + i * g
        o = torch.sigmoid(affine(3) + p["weight_co"] * c)
    elif cell == "coupled":
        f = torch.sigmoid(affine(0))
        g = torch.tanh(affine(1))
        o = torch.sigmoid(affine(2))
        c = f * c + (1 - f) * g
    else:  # plain lstm, as a check on the reference itself
        i, f = torch.sigmoid(affine(0)), torch.sigmoid(affine(1))
        g, o = torch.tanh(affine(2)), torch.sigmoid(affine(3))
        c = f * c + i * g
    return o * torch.tanh(c), c


def _reference_forward(module, x, state):
    """Per-layer, per-direction, per-step loops over _reference_step; returns (output, h_n, c_n)."""
    B, T, _ = x.shape
    D, H = module.num_directions, module.hidden_size
    if state is None:
        state = (x.new_zeros(D * module.num_layers, B, H), x.new_zeros(D * module.num_layers, B, H))
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        directions = []
        for direction in range(D):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            p = {name[: -len(suffix)]: value for name, value in module.named_parameters() if name.endswith(suffix)}
            p["H"] = H
            h, c = state[0][layer * D + direction], state[1][layer * D + direction]
            outputs = [None] * T
            for t in (reversed(range(T)) if direction else range(T)):
                h, c = _reference_step(module.cell, layer_input[:, t], h, c, p)
                outputs[t] = h
            directions.append(torch.stack(outputs, dim=1))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(directions, dim=2)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


@pytest.mark.parametrize("cell", ["peephole", "coupled", "lstm"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "B{}T{}E{}H{}L{}{}{}".format(
    *s[:5], "bi" if s[5] else "", "state" if s[6] else ""))
def test_equation_reference_values_and_gradients(cell, shape):
    B, T, E, H, L, bidirectional, with_state = shape
    assert_matches_equations(StackedLSTM(E, H, L, cell=cell, bidirectional=bidirectional), shape, cell)


def assert_matches_equations(module: StackedLSTM, shape: tuple, what: str) -> None:
    """Values and every gradient of `module` equal the slow equation-by-equation reference (float64)."""
    B, T, E, H, L, bidirectional, with_state = shape
    module = module.double()
    x, state = _inputs(B, T, E, H, L, bidirectional, with_state, dtype=torch.float64)
    reference_values, reference_grads = _run_and_grad(module, x, state, lambda x, s: _reference_forward(module, x, s))
    our_values, our_grads = _run_and_grad(module, x, state, _run_ours(module))
    _assert_close(dict(enumerate(our_values)), dict(enumerate(reference_values)), 1e-10, f"{what} values")
    _assert_close(our_grads, reference_grads, 1e-10, f"{what} gradients")
    for name, gradient in our_grads.items():
        assert gradient.abs().sum() > 0, f"{what}: {name} got no gradient"


def test_peephole_and_coupled_parameters():
    peephole = StackedLSTM(3, 4, 2, cell="peephole")
    names = dict(peephole.named_parameters())
    for layer in range(2):
        for gate in "ifo":
            assert names[f"weight_c{gate}_l{layer}"].shape == (4,)  # diagonal: one weight per unit
    coupled = StackedLSTM(3, 4, 1, cell="coupled")
    assert coupled.weight_ih_l0.shape == (12, 3) and coupled.weight_hh_l0.shape == (12, 4)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_step_repeated_equals_forward(cell, num_layers):
    module = StackedLSTM(4, 5, num_layers, cell=cell, dropout=0.5).eval()
    x = torch.randn(3, 6, 4)
    h0, c0 = torch.randn(num_layers, 3, 5), torch.randn(num_layers, 3, 5)
    with torch.no_grad():
        output, (h_n, c_n) = module(x, (h0, c0))
        state, tops = (h0, c0), []
        for t in range(x.shape[1]):
            top, state = module.step(x[:, t], state)
            tops.append(top)
    assert (torch.stack(tops, dim=1) - output).abs().max() <= 1e-6
    assert (state[0] - h_n).abs().max() <= 1e-6 and (state[1] - c_n).abs().max() <= 1e-6


def test_dropout_between_layers_in_training_only():
    module = StackedLSTM(4, 6, 2, dropout=0.5)
    no_dropout = StackedLSTM(4, 6, 2, dropout=0.0)
    no_dropout.load_state_dict(module.state_dict())
    x = torch.randn(3, 5, 4)
    module.train()
    first, second = module(x)[0], module(x)[0]
    assert not torch.allclose(first, second), "dropout should make training runs differ"
    module.eval()
    assert torch.equal(module(x)[0], module(x)[0])
    assert torch.allclose(module(x)[0], no_dropout(x)[0])
    single = StackedLSTM(4, 6, 1, dropout=0.5).train()  # no layer above: nothing to drop
    assert torch.equal(single(x)[0], single(x)[0])


def test_initial_state_and_no_cell_state():
    module = StackedLSTM(3, 4, 2)
    h, c = module.initial_state(5)
    assert h.shape == c.shape == (2, 5, 4) and h.abs().sum() == 0 and c.abs().sum() == 0
    x = torch.randn(5, 3, 3)
    assert torch.equal(module(x)[0], module(x, (h, c))[0])
    for cell in ("rnn", "gru"):
        module = StackedLSTM(3, 4, 2, cell=cell)
        h0 = torch.randn(2, 5, 4)
        output, (h_n, c_n) = module(x, (h0, torch.randn(2, 5, 4)))
        assert c_n.shape == h_n.shape and c_n.abs().sum() == 0  # documented: c_n is zeros
        assert torch.equal(module(x, (h0, None))[0], output)


def test_detach_state_cuts_gradients_but_carries_values():
    module = StackedLSTM(3, 4, 2)
    x = torch.randn(2, 8, 3, requires_grad=True)
    full_output, full_state = module(x)
    first_output, state = module(x[:, :5])
    carried = detach_state(state)
    assert not carried[0].requires_grad and torch.equal(carried[0], state[0])
    second_output, second_state = module(x[:, 5:], carried)
    assert torch.allclose(torch.cat([first_output, second_output], dim=1), full_output, atol=1e-6)
    assert torch.allclose(second_state[1], full_state[1], atol=1e-6)
    second_output.sum().backward()
    assert x.grad[:, :5].abs().sum() == 0 and x.grad[:, 5:].abs().sum() > 0
    x.grad = None
    module(x[:, 5:], state)[0].sum().backward()  # without detaching, gradient reaches the first chunk
    assert x.grad[:, :5].abs().sum() > 0
    assert detach_state(None) is None


def test_clear_errors():
    with pytest.raises(ValueError, match="dropout"):
        StackedLSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers"):
        StackedLSTM(3, 4, num_layers=0)
    module = StackedLSTM(3, 4, 2)
    for bad in (torch.randn(5, 3), torch.randn(1, 2, 5, 3), torch.randn(2, 5, 7), torch.randn(2, 0, 3)):
        with pytest.raises(ValueError, match=r"x must be \(B, T>=1, input_size=3\)"):
            module(bad)
    x = torch.randn(2, 5, 3)
    good = torch.zeros(2, 2, 4)
    for h, c in [(torch.zeros(1, 2, 4), good), (good, torch.zeros(2, 3, 4)), (good, torch.zeros(2, 2, 5))]:
        with pytest.raises(ValueError, match=r"state [hc] must have shape \(2, 2, 4\)"):
            module(x, (h, c))
    with pytest.raises(ValueError, match="state must be a tuple"):
        module(x, good)
    with pytest.raises(ValueError, match="bidirectional"):
        StackedLSTM(3, 4, bidirectional=True).step(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"x_t must be \(B, input_size=3\)"):
        module.step(torch.randn(2, 1, 3))


def test_package_uses_no_library_recurrent_layers():
    """The chapter's cells are hand-written: torch's recurrent modules only appear here, as oracles."""
    forbidden = re.compile(r"nn\.(LSTM|LSTMCell|GRU|GRUCell|RNN|RNNCell)\(|import\s+(LSTM|GRU|RNN)\b|_VF\.")
    package = Path(__file__).resolve().parents[1] / "captioner"
    offenders = [f"{path}:{number}" for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1) if forbidden.search(line)]
    assert not offenders, f"library recurrent layers used in captioner/: {offenders}"
