"""The chapter's recurrent cells, written out by hand, and `StackedLSTM`, the decoder's recurrent core.

Cells (`cell=`), one equation per line below, each commented in the chapter's symbols:
  rnn       Elman / vanilla RNN:  h_t = tanh(W_x x_t + W_h h_{t-1} + b)                       (1H rows)
  lstm      Hochreiter & Schmidhuber 1997 with a forget gate; gate order i, f, g, o as nn.LSTM  (4H rows)
  peephole  Gers & Schmidhuber 2000: i, f see c_{t-1} and o sees c_t through diagonal weights  (4H rows)
  coupled   input gate tied to the forget gate, i = 1 − f; gate order f, g, o                  (3H rows)
  gru       Cho et al. 2014, PyTorch's variant: b_hn sits inside r ⊙ (W_hn h + b_hn)           (3H rows)

`StackedLSTM` behaves like torch's nn.LSTM with batch_first=True and, for lstm, gru and rnn, has exactly
nn.LSTM's / nn.GRU's / nn.RNN's `state_dict` keys, shapes and gate order, so weights load both ways.
Speed: the input projection W_x x_t + b of a whole sequence is one matmul per layer and direction; each
time step then adds W_h h_{t-1} with one fused `addmm` for all gates, and the readable cell math follows.
For cell="lstm" in float32/float64, `forward` runs captioner/fast_lstm.py by default: the same equations
with backpropagation through time written out by hand (no per-step autograd graph); `fast=False` forces
the readable cells here, which stay the reference the fast path is tested against.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner import fast_lstm

State = tuple[Tensor, Tensor]  # (h, c), each (D*num_layers, B, H); c is zeros for rnn and gru
Weights = dict[str, Tensor]  # one layer and direction: "weight_hh", "bias_hh", peephole "weight_c*"
Record = Optional[dict[str, Tensor]]  # gate activations of one step, or None when not recording
CellOutput = tuple[Tensor, Tensor, Record]  # (h_t, c_t, record)


def rnn_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights, record: bool) -> CellOutput:
    """Vanilla RNN; `x_gates` = W_x x_t + b (both biases). c passes through unchanged (always zeros)."""
    h = torch.tanh(torch.addmm(x_gates, h, weights["weight_hh"].t()))  # h_t = tanh(W_x x_t + W_h h_{t-1} + b)
    return h, c, ({"h": h} if record else None)


def lstm_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights, record: bool) -> CellOutput:
    """LSTM step; `x_gates` = W_x x_t + b (both biases), (B, 4H) in gate order i, f, g, o."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 4H) W_x x_t + W_h h_{t-1} + b
    i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(i)  # i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)
    f = torch.sigmoid(f)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    o = torch.sigmoid(o)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + i ⊙ g
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, ({"i": i, "f": f, "g": g, "o": o, "c": c, "h": h} if record else None)


def peephole_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights, record: bool) -> CellOutput:
    """Peephole LSTM (Gers & Schmidhuber 2000); peephole weights w_c* are per-unit vectors (H,)."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 4H) W_x x_t + W_h h_{t-1} + b
    i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(i + weights["weight_ci"] * c)  # i_t = σ(W_xi x_t + W_hi h_{t-1} + w_ci ⊙ c_{t-1} + b)
    f = torch.sigmoid(f + weights["weight_cf"] * c)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + w_cf ⊙ c_{t-1} + b)
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + i ⊙ g
    o = torch.sigmoid(o + weights["weight_co"] * c)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + w_co ⊙ c_t + b)
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, ({"i": i, "f": f, "g": g, "o": o, "c": c, "h": h} if record else None)


def coupled_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights, record: bool) -> CellOutput:
    """Coupled input-forget gate LSTM: what is forgotten is replaced, i = 1 − f. Gate order f, g, o."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 3H) W_x x_t + W_h h_{t-1} + b
    f, g, o = gates.chunk(3, dim=1)  # 3 x (B, H)
    f = torch.sigmoid(f)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)
    i = 1 - f  # i_t = 1 − f_t
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    o = torch.sigmoid(o)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + (1 − f) ⊙ g
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, ({"i": i, "f": f, "g": g, "o": o, "c": c, "h": h} if record else None)


def gru_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights, record: bool) -> CellOutput:
    """GRU step as nn.GRU; `x_gates` = W_x x_t + b_i (input bias only), (B, 3H) in gate order r, z, n."""
    h_gates = torch.addmm(weights["bias_hh"], h, weights["weight_hh"].t())  # (B, 3H) W_h h_{t-1} + b_h
    x_r, x_z, x_n = x_gates.chunk(3, dim=1)  # 3 x (B, H)
    h_r, h_z, h_n = h_gates.chunk(3, dim=1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)  # r_t = σ(W_xr x_t + b_xr + W_hr h_{t-1} + b_hr)
    z = torch.sigmoid(x_z + h_z)  # z_t = σ(W_xz x_t + b_xz + W_hz h_{t-1} + b_hz)
    n = torch.tanh(x_n + r * h_n)  # n_t = tanh(W_xn x_t + b_xn + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h = (1 - z) * n + z * h  # h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    return h, c, ({"r": r, "z": z, "n": n, "h": h} if record else None)


CellFunction = Callable[[Tensor, Tensor, Tensor, Weights, bool], CellOutput]
CELLS: dict[str, tuple[CellFunction, int]] = {  # name -> (step function, gate rows per hidden unit)
    "rnn": (rnn_cell, 1),
    "lstm": (lstm_cell, 4),
    "peephole": (peephole_cell, 4),
    "coupled": (coupled_cell, 3),
    "gru": (gru_cell, 3),
}
PEEPHOLES = ("weight_ci", "weight_cf", "weight_co")


def detach_state(state: Optional[State]) -> Optional[State]:
    """Cut the graph at a chunk boundary for truncated BPTT: same values, no gradient path back.

        state = None
        for chunk in sequence.split(k, dim=1):          # (B, k, E) chunks of the long sequence
            output, state = lstm(chunk, state)
            loss_of(output).backward(); optimizer.step(); optimizer.zero_grad()
            state = detach_state(state)                 # carry the values, not the graph
    """
    if state is None:
        return None
    return tuple(None if part is None else part.detach() for part in state)  # type: ignore[return-value]


class StackedLSTM(nn.Module):
    """Stacked, optionally bidirectional recurrent layers with nn.LSTM's interface (batch_first=True).

    forward(x (B, T, input_size), state=None) -> (output (B, T, D*H), (h_n, c_n) each (D*num_layers, B, H)),
    D = 2 if bidirectional; state rows are ordered layer-major, direction-minor, as in nn.LSTM.
    state=None means h_0 = c_0 = 0. Dropout acts on each layer's output except the last, in training only.
    rnn and gru have no cell state: their c is ignored on input (None is accepted) and c_n is all zeros of
    h_n's shape, so every cell returns the same (h, c) type and the decoder needs no special case.
    fast=True (default) runs lstm layers through captioner/fast_lstm.py where it applies (see the module
    docstring); set `module.fast = False` to run the readable cells, e.g. to compare or to debug.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 cell: str = "lstm", bidirectional: bool = False, fast: bool = True) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"StackedLSTM: cell must be one of {', '.join(CELLS)}, got {cell!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StackedLSTM: {name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"StackedLSTM: dropout must be in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.cell, self.bidirectional = float(dropout), cell, bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.fast = bool(fast)  # use captioner/fast_lstm.py in forward where it applies; False = reference cells
        self.cell_function, gate_rows = CELLS[cell]
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                shapes = {"weight_ih": (gate_rows * hidden_size, layer_input_size),
                          "weight_hh": (gate_rows * hidden_size, hidden_size),
                          "bias_ih": (gate_rows * hidden_size,), "bias_hh": (gate_rows * hidden_size,)}
                if cell == "peephole":
                    shapes.update({name: (hidden_size,) for name in PEEPHOLES})
                for name, shape in shapes.items():  # flat names on self, so state_dict keys match nn.LSTM
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every parameter, the same initialisation as nn.LSTM."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, cell={self.cell!r}, "
                f"dropout={self.dropout}, bidirectional={self.bidirectional}, fast={self.fast}")

    def _weights(self, layer: int, direction: int) -> Weights:
        suffix = self._suffix(layer, direction)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (PEEPHOLES if self.cell == "peephole" else ())
        return {name: getattr(self, name + suffix) for name in names}

    def _input_gates(self, x: Tensor, weights: Weights) -> Tensor:
        """W_x x + b for all positions in one matmul; b_h is folded in, except for gru (it sits inside r ⊙ ·)."""
        bias = weights["bias_ih"] if self.cell == "gru" else weights["bias_ih"] + weights["bias_hh"]
        return F.linear(x, weights["weight_ih"], bias)  # (..., G*H)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> State:
        """h_0 = c_0 = 0, each (D*num_layers, B, H)."""
        dtype = dtype if dtype is not None else self.weight_ih_l0.dtype
        device = device if device is not None else self.weight_ih_l0.device
        shape = (self.num_directions * self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def _check_state(self, state: Optional[State], batch_size: int, reference: Tensor, where: str) -> State:
        if state is None:
            return self.initial_state(batch_size, reference.device, reference.dtype)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"StackedLSTM.{where}: state must be a tuple (h, c), got {type(state).__name__}")
        h, c = state
        if self.cell in ("rnn", "gru") and isinstance(h, Tensor):
            c = torch.zeros_like(h)  # no cell state: whatever c was passed, c_n stays all zeros
        expected = (self.num_directions * self.num_layers, batch_size, self.hidden_size)
        for name, part in (("h", h), ("c", c)):
            if not isinstance(part, Tensor) or tuple(part.shape) != expected:
                got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                raise ValueError(f"StackedLSTM.{where}: state {name} must have shape {expected} "
                                 f"= (D*num_layers, B, H), got {got}")
        return h, c

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """Run the whole sequence; see the class docstring for shapes."""
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[1] == 0:
            raise ValueError(f"StackedLSTM.forward: x must be (B, T>=1, input_size={self.input_size}), "
                             f"got shape {tuple(x.shape)}")
        h_0, c_0 = self._check_state(state, x.shape[0], x, "forward")
        layer_input = x.transpose(0, 1)  # (T, B, E) time-major, so each step's slice is contiguous
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            outputs = []
            for direction in range(self.num_directions):
                row = layer * self.num_directions + direction
                output, h, c = self._run_direction(layer_input, h_0[row], c_0[row], layer, direction, state is None)
                outputs.append(output)  # (T, B, H)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*H)
        return layer_input.transpose(0, 1), (torch.stack(h_n), torch.stack(c_n))  # (B, T, D*H), (D*L, B, H)

    def _run_direction(self, layer_input: Tensor, h: Tensor, c: Tensor, layer: int, direction: int,
                       zero_state: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """One layer in one direction over (T, B, E); the backward direction reads time in reverse."""
        weights = self._weights(layer, direction)
        if self.fast and fast_lstm.fast_path_applies(layer_input, self.cell):  # zero state: None, skips W_h h_0
            return fast_lstm.lstm_layer(layer_input, weights, None if zero_state else h,
                                        None if zero_state else c, reverse=bool(direction))
        x_gates = self._input_gates(layer_input, weights)  # (T, B, G*H), one matmul for all T
        T = x_gates.shape[0]
        outputs: list[Tensor] = [h] * T
        for t in (range(T - 1, -1, -1) if direction else range(T)):
            h, c, _ = self.cell_function(x_gates[t], h, c, weights, False)
            outputs[t] = h
        return torch.stack(outputs), h, c  # (T, B, H)

    def step(self, x_t: Tensor, state: Optional[State] = None, record: bool = False
             ) -> tuple[Tensor, State] | tuple[Tensor, State, list[dict[str, Tensor]]]:
        """One time step through all layers, for greedy and beam decoding.

        x_t (B, input_size); state (h, c) each (num_layers, B, H), None = zeros. Returns (h_top (B, H), state).
        With record=True also returns one dict per layer of the step's activations (keys: i f g o c h for the
        LSTM family, r z n h for gru, h for rnn), for the "Inside the LSTM" view; these are the tensors the
        cell computed, still in the graph, so call .detach() before keeping them.
        """
        if self.bidirectional:
            raise ValueError("StackedLSTM.step: a bidirectional stack cannot be run one step at a time")
        if x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"StackedLSTM.step: x_t must be (B, input_size={self.input_size}), "
                             f"got shape {tuple(x_t.shape)}")
        h_0, c_0 = self._check_state(state, x_t.shape[0], x_t, "step")
        fast_decoding = (self.fast and not record and not torch.is_grad_enabled()
                         and fast_lstm.fast_path_applies(x_t, self.cell))
        layer_input, h_n, c_n, records = x_t, [], [], []
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            weights = self._weights(layer, 0)
            if fast_decoding:  # no autograd, no record: fast_lstm's step, one GEMM on cached joined weights
                h, c = fast_lstm.decoding_step(self, layer, layer_input, h_0[layer], c_0[layer], weights)
                activations = None
            else:
                x_gates = self._input_gates(layer_input, weights)  # (B, G*H)
                h, c, activations = self.cell_function(x_gates, h_0[layer], c_0[layer], weights, record)
            h_n.append(h)
            c_n.append(c)
            records.append(activations)
            layer_input = h  # (B, H)
        new_state = (torch.stack(h_n), torch.stack(c_n))  # (num_layers, B, H) each
        return (layer_input, new_state, records) if record else (layer_input, new_state)
