"""The LSTM layer's fast path: the same equations as `lstm.lstm_cell`, with backpropagation through time
written out by hand in one custom autograd Function per layer.

Why it is faster: autograd records about ten graph nodes per time step and, going back, accumulates the
recurrent weight gradient with one small GEMM per step. Written out, the backward pass of a layer is one
GEMM per step (δh_{t-1} = δA_t W_h, the only truly sequential work) plus a few pointwise ops on (B, H)
tiles, and every weight gradient is ONE large GEMM over all T*B rows after the loop. The forward pass
writes into preallocated buffers, in place. The readable `lstm_cell` stays the reference: this file must
match it to 1e-5 (tests/test_fast_lstm.py runs the same oracles on both paths).

Forward, one layer (Hochreiter & Schmidhuber 1997 with a forget gate; gate order i, f, g, o as nn.LSTM):
    A_t = W_x x_t + b_x + b_h + W_h h_{t-1}       (the W_x x_t part for all t in one GEMM)
    i, f, o = σ(a_i), σ(a_f), σ(a_o);  g = tanh(a_g)
    c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)
Backward (δ· = ∂L/∂·; a_* are the pre-activations, σ' = σ(1 − σ), tanh' = 1 − tanh²):
    δh_t = ∂L/∂h_t (from the output) + δA_{t+1} W_h
    δc_t = δc_{t+1} ⊙ f_{t+1} + δh_t ⊙ o_t ⊙ (1 − tanh² c_t)
    δa_o = δh_t ⊙ tanh c_t ⊙ o(1 − o)      δa_i = δc_t ⊙ g ⊙ i(1 − i)
    δa_f = δc_t ⊙ c_{t-1} ⊙ f(1 − f)       δa_g = δc_t ⊙ i ⊙ (1 − g²)
    after the loop: δW_h = Σ_t δA_tᵀ h_{t-1};  δW_x = Σ_t δA_tᵀ x_t;  δb = Σ_t δA_t;  δx_t = δA_t W_x
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

FAST_DTYPES = (torch.float32, torch.float64)
FAST_DEVICES = ("cpu", "cuda")


def fast_path_applies(x: Tensor, cell: str) -> bool:
    """The fast path covers the plain LSTM in float32/float64 on CPU or CUDA, outside autocast."""
    return (cell == "lstm" and x.dtype in FAST_DTYPES and x.device.type in FAST_DEVICES
            and not torch.is_autocast_enabled(x.device.type))


def lstm_layer(x: Tensor, weights: dict[str, Tensor], h: Tensor, c: Tensor,
               reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction. x (T, B, E), h and c (B, H) -> (output (T, B, H), h_n, c_n).

    reverse=True reads time backwards (the second direction of a bidirectional layer): the sequence is
    flipped, run forwards, and the output flipped back, so output[t] is still position t."""
    if reverse:
        x = x.flip(0)  # (T, B, E) last position first
    output, h_n, c_n = LSTMLayerFunction.apply(x, weights["weight_ih"], weights["weight_hh"],
                                               weights["bias_ih"], weights["bias_hh"], h, c)
    return (output.flip(0) if reverse else output), h_n, c_n


class LSTMLayerFunction(torch.autograd.Function):
    """One layer over a whole sequence, forward and backward through time written out (see the module)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                bias_hh: Tensor, h_0: Tensor, c_0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        T, B, E = x.shape
        H = weight_hh.shape[1]
        inputs = x.reshape(T * B, E)  # (T*B, E), a copy only if x was not contiguous
        gates = torch.addmm(bias_ih + bias_hh, inputs, weight_ih.t()).view(T, B, 4 * H)  # W_x x_t + b, all t
        cells = x.new_empty(T + 1, B, H)  # cells[t] = c_t, with cells[0] = c_0 the given state
        cells[0] = c_0
        tanh_cells = x.new_empty(T, B, H)  # tanh(c_t), kept for the backward pass
        hidden = x.new_empty(T, B, H)  # h_1 .. h_T, the layer's output
        weight_hh_t = weight_hh.t()  # (H, 4H) view: the GEMM reads it transposed, no copy
        h = h_0
        for t in range(T):
            gate = gates[t].addmm_(h, weight_hh_t)  # (B, 4H) A_t = W_x x_t + b + W_h h_{t-1}, in place
            i, f, g, o = gate.chunk(4, dim=1)  # 4 x (B, H) views: activated in place below
            i.sigmoid_()  # i_t = σ(a_i)
            f.sigmoid_()  # f_t = σ(a_f)
            g.tanh_()  # g_t = tanh(a_g)
            o.sigmoid_()  # o_t = σ(a_o)
            c = torch.mul(f, cells[t], out=cells[t + 1]).addcmul_(i, g)  # c_t = f ⊙ c_{t-1} + i ⊙ g
            h = torch.mul(o, torch.tanh(c, out=tanh_cells[t]), out=hidden[t])  # h_t = o ⊙ tanh(c_t)
        ctx.save_for_backward(inputs, weight_ih, weight_hh, h_0, gates, cells, tanh_cells, hidden)
        return hidden, hidden[-1].clone(), cells[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, d_hidden: Tensor, d_h_n: Tensor, d_c_n: Tensor) -> tuple:
        inputs, weight_ih, weight_hh, h_0, gates, cells, tanh_cells, hidden = ctx.saved_tensors
        T, B, G = gates.shape
        d_gates = torch.empty_like(gates)  # (T, B, 4H) δA_t, the gradient of the pre-activations
        d_h = d_h_n + d_hidden[-1]  # (B, H) δh_T
        d_c = d_c_n.clone()  # (B, H) δc_T from after the sequence, updated in place going back
        for t in range(T - 1, -1, -1):
            _gate_gradients(d_gates[t], d_h, d_c, gates[t], cells[t], tanh_cells[t])
            if t > 0:
                d_h = torch.addmm(d_hidden[t - 1], d_gates[t], weight_hh)  # δh_{t-1} = ∂L/∂h_{t-1} + δA_t W_h
        d_h_0 = d_gates[0] @ weight_hh  # (B, H) δh_0 = δA_1 W_h
        return _weight_gradients(ctx.needs_input_grad, d_gates.view(T * B, G), inputs, weight_ih, h_0,
                                 hidden) + (d_h_0, d_c)


def _gate_gradients(d_gate: Tensor, d_h: Tensor, d_c: Tensor, gate: Tensor, c_prev: Tensor,
                    tanh_c: Tensor) -> None:
    """One step back: write δA_t into d_gate (B, 4H) and turn d_c from δc_{t+1}-carried into δc_{t-1}."""
    i, f, g, o = gate.chunk(4, dim=1)  # 4 x (B, H) activations saved by the forward pass
    d_i, d_f, d_g, d_o = d_gate.chunk(4, dim=1)  # 4 x (B, H) views written below
    d_c.addcmul_(d_h, o * (1 - tanh_c * tanh_c))  # δc_t = δc_{t+1} ⊙ f_{t+1} + δh_t ⊙ o_t ⊙ (1 − tanh² c_t)
    torch.mul(d_h, tanh_c * o * (1 - o), out=d_o)  # δa_o = δh_t ⊙ tanh c_t ⊙ o(1 − o)
    torch.mul(d_c, g * i * (1 - i), out=d_i)  # δa_i = δc_t ⊙ g ⊙ i(1 − i)
    torch.mul(d_c, c_prev * f * (1 - f), out=d_f)  # δa_f = δc_t ⊙ c_{t-1} ⊙ f(1 − f)
    torch.mul(d_c, i * (1 - g * g), out=d_g)  # δa_g = δc_t ⊙ i ⊙ (1 − g²)
    d_c.mul_(f)  # carried to step t-1: δc_t ⊙ f_t


def _weight_gradients(wants: tuple[bool, ...], d_gates: Tensor, inputs: Tensor, weight_ih: Tensor,
                      h_0: Tensor, hidden: Tensor) -> tuple:
    """δx, δW_x, δW_h, δb_x, δb_h: one large GEMM each over all T*B rows. d_gates (T*B, 4H)."""
    T, B, H = hidden.shape
    d_x = (d_gates @ weight_ih).view(T, B, -1) if wants[0] else None  # δx_t = δA_t W_x
    d_weight_ih = d_gates.t() @ inputs if wants[1] else None  # (4H, E) δW_x = Σ_t δA_tᵀ x_t
    d_weight_hh = None
    if wants[2]:
        previous = hidden[:-1].reshape((T - 1) * B, H)  # h_1 .. h_{T-1}, the h_{t-1} of steps 2..T
        d_weight_hh = torch.addmm(d_gates[:B].t() @ h_0, d_gates[B:].t(), previous)  # δW_h = Σ_t δA_tᵀ h_{t-1}
    d_bias = d_gates.sum(0) if wants[3] or wants[4] else None  # (4H,) δb = Σ_t δA_t, for b_x and b_h alike
    return d_x, d_weight_ih, d_weight_hh, d_bias, (None if d_bias is None else d_bias.clone())
