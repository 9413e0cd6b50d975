"""`StackedLSTM`: the chapter's cells (cells.py) stacked in layers and directions, with nn.LSTM's interface.

For lstm, gru and rnn it has exactly nn.LSTM's / nn.GRU's / nn.RNN's `state_dict` keys, shapes and gate order,
so weights load both ways. For cell="lstm" in float32/float64, `forward` runs fused.py by default: the same
equations with backpropagation through time written out by hand; `fast=False` forces the readable cells.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from captioner.rnn import fused
from captioner.rnn.cells import CELLS, PEEPHOLES, State, Weights
from captioner.rnn.packing import reversed_order
from captioner.rnn.recorder import is_recording, record


class StackedLSTM(nn.Module):
    """Stacked, optionally bidirectional recurrent layers with nn.LSTM's interface (batch_first=True).

    forward(x (B, T, input_size), state=None) -> (output (B, T, D*H), (h_n, c_n) each (D*num_layers, B, H)),
    D = 2 if bidirectional; state rows are ordered layer-major, direction-minor, as in nn.LSTM. x may be a
    PackedSequence (captions of different lengths), as for nn.LSTM: the output is one too.
    state=None means h_0 = c_0 = 0. Dropout acts on each layer's output except the last, in training only.
    rnn and gru have no cell state: their c is ignored on input (None is accepted) and c_n is all zeros of
    h_n's shape, so every cell returns the same (h, c) type and the decoder needs no special case.
    fast=True (default) runs lstm layers through captioner/rnn/fused.py where it applies (see the module
    docstring); set `module.fast = False` to run the readable cells, e.g. to compare or to debug.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 cell: str = "lstm", bidirectional: bool = False, fast: bool = True) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StackedLSTM: {name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"StackedLSTM: dropout must be in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.cell, self.bidirectional = float(dropout), cell, bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.fast = bool(fast)  # use captioner/rnn/fused.py in forward where it applies; False = reference cells
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

    def forward(self, x: Tensor | PackedSequence,
                state: Optional[State] = None) -> tuple[Tensor | PackedSequence, State]:
        """Run the whole sequence; see the class docstring for shapes. A `PackedSequence` (captions of
        different lengths, packing.py) gives a PackedSequence out and each row's state after its own
        last step, as nn.LSTM does; no step is spent on padding."""
        data, batch_sizes = self._packed_input(x)  # (N, E), rows running at each step
        h_0, c_0 = self._check_state(state, batch_sizes[0], data, "forward")
        if isinstance(x, PackedSequence) and x.sorted_indices is not None:  # state rows in packed order
            h_0, c_0 = h_0.index_select(1, x.sorted_indices), c_0.index_select(1, x.sorted_indices)
        layer_input, h_n, c_n = data, [], []
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            outputs = []
            for direction in range(self.num_directions):
                row = layer * self.num_directions + direction
                output, h, c = self._run_direction(layer_input, batch_sizes, h_0[row], c_0[row], layer, direction,
                                                   state is None)
                outputs.append(output)  # (N, H)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (N, D*H)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)  # (D*L, B, H)
        if isinstance(x, PackedSequence):
            if x.unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, x.unsorted_indices), c_n.index_select(1, x.unsorted_indices)
            return PackedSequence(layer_input, x.batch_sizes, x.sorted_indices, x.unsorted_indices), (h_n, c_n)
        T, B = len(batch_sizes), batch_sizes[0]
        return layer_input.view(T, B, -1).transpose(0, 1), (h_n, c_n)  # (B, T, D*H), (D*L, B, H)

    def _packed_input(self, x: Tensor | PackedSequence) -> tuple[Tensor, tuple[int, ...]]:
        """x as packed rows (N, E) and the rows running at each step; a dense (B, T, E) batch runs B rows
        at every step, stored time-major, so each step's rows are contiguous."""
        if isinstance(x, PackedSequence):
            if x.data.dim() != 2 or x.data.shape[1] != self.input_size:
                raise ValueError(f"StackedLSTM.forward: packed data must be (N, input_size={self.input_size}), "
                                 f"got shape {tuple(x.data.shape)}")
            return x.data, tuple(x.batch_sizes.tolist())
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[1] == 0:
            raise ValueError(f"StackedLSTM.forward: x must be (B, T>=1, input_size={self.input_size}), "
                             f"got shape {tuple(x.shape)}")
        B, T, E = x.shape
        return x.transpose(0, 1).reshape(T * B, E), (B,) * T  # (T*B, E)

    def _run_direction(self, data: Tensor, batch_sizes: tuple[int, ...], h: Tensor, c: Tensor, layer: int,
                       direction: int, zero_state: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """One layer in one direction over packed rows (N, E); the backward direction reads each row in
        reverse (packing.reversed_order), runs forwards, and puts the output back in place."""
        weights = self._weights(layer, direction)
        order = reversed_order(batch_sizes, data.device) if direction else None
        if order is not None:
            data = data.index_select(0, order)
        if self.fast and fused.fast_path_applies(data, self.cell):  # zero state: None, skips W_h h_0
            output, h, c = fused.lstm_layer(data, batch_sizes, weights, None if zero_state else h,
                                            None if zero_state else c)
        else:
            output, h, c = self._readable_direction(data, batch_sizes, h, c, weights)
        return (output if order is None else output.index_select(0, order)), h, c

    def _readable_direction(self, data: Tensor, batch_sizes: tuple[int, ...], h: Tensor, c: Tensor,
                            weights: Weights) -> tuple[Tensor, Tensor, Tensor]:
        """The reference: the readable cell at every step, on the rows still running; a row that has
        ended keeps its last state, which is its h_n and c_n."""
        x_gates = self._input_gates(data, weights)  # (N, G*H), one matmul for all steps
        outputs, start = [], 0
        for n in batch_sizes:
            h_t, c_t, _ = self.cell_function(x_gates[start : start + n], h[:n], c[:n], weights)
            outputs.append(h_t)  # (n, H)
            h, c = (h_t, c_t) if n == h.shape[0] else (torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]]))
            start += n
        return torch.cat(outputs), h, c  # (N, H)

    def step(self, x_t: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """One time step through all layers, for greedy and beam decoding.

        x_t (B, input_size); state (h, c) each (num_layers, B, H), None = zeros. Returns (h_top (B, H), state).
        Inside `recorder.recording(self)` each step also records, detached, one dict per layer of what the
        cell computed (keys: i f g o c h for the LSTM family, r z n h for gru, h for rnn).
        """
        if self.bidirectional:
            raise ValueError("StackedLSTM.step: a bidirectional stack cannot be run one step at a time")
        if x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"StackedLSTM.step: x_t must be (B, input_size={self.input_size}), "
                             f"got shape {tuple(x_t.shape)}")
        h_0, c_0 = self._check_state(state, x_t.shape[0], x_t, "step")
        recording = is_recording(self)  # inside `recording(self)` on this thread
        fast_decoding = (self.fast and not recording and not torch.is_grad_enabled()
                         and fused.fast_path_applies(x_t, self.cell))
        layer_input, h_n, c_n, layers = x_t, [], [], []
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            weights = self._weights(layer, 0)
            if fast_decoding:  # no autograd, no recording: fused's step, one GEMM on cached joined weights
                h, c = fused.decoding_step(self, layer, layer_input, h_0[layer], c_0[layer], weights)
            else:
                x_gates = self._input_gates(layer_input, weights)  # (B, G*H)
                h, c, activations = self.cell_function(x_gates, h_0[layer], c_0[layer], weights)
                layers.append({name: value.detach() for name, value in activations.items()} if recording else None)
            h_n.append(h)
            c_n.append(c)
            layer_input = h  # (B, H)
        if recording:
            record(self, layers)
        return layer_input, (torch.stack(h_n), torch.stack(c_n))  # (num_layers, B, H) each
