"""The chapter's recurrent cells, written out by hand; `StackedLSTM` (stacked.py) stacks them.

Cells (`cell=`), one equation per line below, each commented in the chapter's symbols:
  rnn       Elman / vanilla RNN:  h_t = tanh(W_x x_t + W_h h_{t-1} + b)                       (1H rows)
  lstm      Hochreiter & Schmidhuber 1997 with a forget gate; gate order i, f, g, o as nn.LSTM  (4H rows)
  peephole  Gers & Schmidhuber 2000: i, f see c_{t-1} and o sees c_t through diagonal weights  (4H rows)
  coupled   input gate tied to the forget gate, i = 1 − f; gate order f, g, o                  (3H rows)
  gru       Cho et al. 2014, PyTorch's variant: b_hn sits inside r ⊙ (W_hn h + b_hn)           (3H rows)

`StackedLSTM` (stacked.py) behaves like torch's nn.LSTM with batch_first=True and, for lstm, gru and rnn, has exactly
nn.LSTM's / nn.GRU's / nn.RNN's `state_dict` keys, shapes and gate order, so weights load both ways.
Speed: the input projection W_x x_t + b of a whole sequence is one matmul per layer and direction; each
time step then adds W_h h_{t-1} with one fused `addmm` for all gates, and the readable cell math follows.
For cell="lstm" in float32/float64, `forward` runs captioner/rnn/fused.py by default: the same equations
with backpropagation through time written out by hand (no per-step autograd graph); `fast=False` forces
the readable cells here, which stay the reference the fast path is tested against.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

State = tuple[Tensor, Tensor]  # (h, c), each (D*num_layers, B, H); c is zeros for rnn and gru
Weights = dict[str, Tensor]  # one layer and direction: "weight_hh", "bias_hh", peephole "weight_c*"
Activations = dict[str, Tensor]  # one step's gates and states by name, for the "Inside the LSTM" view
CellOutput = tuple[Tensor, Tensor, Activations]  # (h_t, c_t, activations)


def rnn_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights) -> CellOutput:
    """Vanilla RNN; `x_gates` = W_x x_t + b (both biases). c passes through unchanged (always zeros)."""
    h = torch.tanh(torch.addmm(x_gates, h, weights["weight_hh"].t()))  # h_t = tanh(W_x x_t + W_h h_{t-1} + b)
    return h, c, {"h": h}


def lstm_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights) -> CellOutput:
    """LSTM step; `x_gates` = W_x x_t + b (both biases), (B, 4H) in gate order i, f, g, o."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 4H) W_x x_t + W_h h_{t-1} + b
    i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(i)  # i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)
    f = torch.sigmoid(f)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    o = torch.sigmoid(o)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + i ⊙ g
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, {"i": i, "f": f, "g": g, "o": o, "c": c, "h": h}


def peephole_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights) -> CellOutput:
    """Peephole LSTM (Gers & Schmidhuber 2000); peephole weights w_c* are per-unit vectors (H,)."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 4H) W_x x_t + W_h h_{t-1} + b
    i, f, g, o = gates.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(i + weights["weight_ci"] * c)  # i_t = σ(W_xi x_t + W_hi h_{t-1} + w_ci ⊙ c_{t-1} + b)
    f = torch.sigmoid(f + weights["weight_cf"] * c)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + w_cf ⊙ c_{t-1} + b)
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + i ⊙ g
    o = torch.sigmoid(o + weights["weight_co"] * c)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + w_co ⊙ c_t + b)
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, {"i": i, "f": f, "g": g, "o": o, "c": c, "h": h}


def coupled_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights) -> CellOutput:
    """Coupled input-forget gate LSTM: what is forgotten is replaced, i = 1 − f. Gate order f, g, o."""
    gates = torch.addmm(x_gates, h, weights["weight_hh"].t())  # (B, 3H) W_x x_t + W_h h_{t-1} + b
    f, g, o = gates.chunk(3, dim=1)  # 3 x (B, H)
    f = torch.sigmoid(f)  # f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)
    i = 1 - f  # i_t = 1 − f_t
    g = torch.tanh(g)  # g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)
    o = torch.sigmoid(o)  # o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)
    c = f * c + i * g  # c_t = f ⊙ c_{t-1} + (1 − f) ⊙ g
    h = o * torch.tanh(c)  # h_t = o ⊙ tanh(c_t)
    return h, c, {"i": i, "f": f, "g": g, "o": o, "c": c, "h": h}


def gru_cell(x_gates: Tensor, h: Tensor, c: Tensor, weights: Weights) -> CellOutput:
    """GRU step as nn.GRU; `x_gates` = W_x x_t + b_i (input bias only), (B, 3H) in gate order r, z, n."""
    h_gates = torch.addmm(weights["bias_hh"], h, weights["weight_hh"].t())  # (B, 3H) W_h h_{t-1} + b_h
    x_r, x_z, x_n = x_gates.chunk(3, dim=1)  # 3 x (B, H)
    h_r, h_z, h_n = h_gates.chunk(3, dim=1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)  # r_t = σ(W_xr x_t + b_xr + W_hr h_{t-1} + b_hr)
    z = torch.sigmoid(x_z + h_z)  # z_t = σ(W_xz x_t + b_xz + W_hz h_{t-1} + b_hz)
    n = torch.tanh(x_n + r * h_n)  # n_t = tanh(W_xn x_t + b_xn + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h = (1 - z) * n + z * h  # h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    return h, c, {"r": r, "z": z, "n": n, "h": h}


CellFunction = Callable[[Tensor, Tensor, Tensor, Weights], CellOutput]
CELLS: dict[str, tuple[CellFunction, int]] = {  # name -> (step function, gate rows per hidden unit)
    "rnn": (rnn_cell, 1),
    "lstm": (lstm_cell, 4),
    "peephole": (peephole_cell, 4),
    "coupled": (coupled_cell, 3),
    "gru": (gru_cell, 3),
}
MEMORY_CELLS = ("lstm", "peephole", "coupled")  # cells with a memory c; rnn and gru carry h only
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

