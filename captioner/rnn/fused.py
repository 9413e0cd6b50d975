"""The LSTM layer's fast path: the same equations as `cells.lstm_cell`, with backpropagation through time
written out by hand in one custom autograd Function per layer.

Why it is faster: autograd records about ten graph nodes per time step and, going back, accumulates the
recurrent weight gradient with one small GEMM per step. Written out, the backward pass of a layer is one
GEMM per step (δh_{t-1} = δA_t W_h, the only truly sequential work) plus a few pointwise ops on (B, H)
tiles, and every weight gradient is ONE large GEMM over all T*B rows after the loop. The forward pass
writes into preallocated buffers, in place. The readable `lstm_cell` stays the reference: this file must
match it to 1e-5 (tests/test_rnn_fused.py runs the same oracles on both paths). `decoding_step` is the
same cell for one step without autograd (greedy and beam search), with [W_x | W_h] joined and cached.
A layer runs on packed rows (packing.py): step t is the batch_sizes[t] captions still running, so a
caption that has ended costs nothing, forward or backward; a dense batch is B rows at every step.

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

import weakref
from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from captioner.rnn import gemm

FAST_DTYPES = (torch.float32, torch.float64)
FAST_DEVICES = ("cpu", "cuda")
_CONSTANTS: dict[tuple[float, torch.device, torch.dtype], Tensor] = {}  # see _constant
_DECODING: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # module -> joined weights


def fast_path_applies(x: Tensor, cell: str) -> bool:
    """The fast path covers the plain LSTM in float32/float64 on CPU or CUDA, outside autocast."""
    return (cell == "lstm" and x.dtype in FAST_DTYPES and x.device.type in FAST_DEVICES
            and not torch.is_autocast_enabled(x.device.type))


def lstm_layer(x: Tensor, batch_sizes: tuple[int, ...], weights: dict[str, Tensor], h: Optional[Tensor],
               c: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a packed sequence (packing.py): x (N, E) holds step t's
    batch_sizes[t] rows after step t-1's, rows ordered by decreasing length; h and c (B, H).
    Returns (output (N, H) in x's layout, h_n, c_n (B, H)): each row's state after its own last step.
    h = c = None means a zero initial state: the first step then skips W_h h_0 (and its gradients)."""
    return LSTMLayerFunction.apply(x, batch_sizes, weights["weight_ih"], weights["weight_hh"],
                                   weights["bias_ih"], weights["bias_hh"], h, c)


class LSTMLayerFunction(torch.autograd.Function):
    """One layer over a whole packed sequence, forward and backward through time written out (see the module).
    A dense (B, T) batch is the packing whose T steps all hold B rows; a shorter caption leaves the batch
    after its last step, so no work is spent on padding (as `nn.LSTM` does with a `PackedSequence`)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, batch_sizes: tuple[int, ...], weight_ih: Tensor, weight_hh: Tensor,
                bias_ih: Tensor, bias_hh: Tensor, h_0: Optional[Tensor],
                c_0: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        B, H = batch_sizes[0], weight_hh.shape[1]
        input_gates = gemm.linear(x, weight_ih, bias_ih + bias_hh)  # (N, 4H) W_x x_t + b, every step at once
        recurrent = gemm.StepWeight(weight_hh, B)  # W_h, prepared once for T products
        cells, tanh_cells, hidden = (x.new_empty(x.shape[0], H) for _ in range(3))  # c_t, tanh(c_t), h_t
        first_cell = x.new_zeros(B, H) if c_0 is None else c_0
        gates, h, c, start = [], h_0, first_cell, 0
        for n in batch_sizes:
            rows = slice(start, start + n)  # step t's rows: the n captions still running
            # (n, 4H) A_t = W_x x_t + b + W_h h_{t-1}; with h_0 = 0 the first step has no W_h term
            gate = input_gates[rows] if h is None else recurrent(h[:n], input_gates[rows])
            _cell_step(gate, c[:n], cells[rows], tanh_cells[rows], hidden[rows])
            gates.append(gate)  # now the activations i, f, g, o
            h, c, start = hidden[rows], cells[rows], start + n
        ctx.save_for_backward(x, weight_ih, weight_hh, h_0, hidden)
        ctx.gates, ctx.cells, ctx.tanh_cells = gates, cells, tanh_cells  # intermediates live on ctx, as torch advises
        ctx.first_cell, ctx.batch_sizes = first_cell, batch_sizes
        return hidden, _final_rows(hidden, batch_sizes), _final_rows(cells, batch_sizes)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, d_hidden: Tensor, d_h_n: Tensor, d_c_n: Tensor) -> tuple:
        x, weight_ih, weight_hh, h_0, hidden = ctx.saved_tensors
        gates, cells, tanh_cells, sizes = ctx.gates, ctx.cells, ctx.tanh_cells, ctx.batch_sizes
        starts = _starts(sizes)
        H, wants = hidden.shape[1], ctx.needs_input_grad
        recurrent = gemm.StepWeight(weight_hh.t(), sizes[0])  # x ↦ x W_h: the transposed product going back
        d_gates = hidden.new_empty(hidden.shape[0], 4 * H)  # δA_t, the gradient of the pre-activations
        d_c = d_c_n.clone()  # (B, H) δc after each row's last step, updated in place going back
        last, n = starts[-1], sizes[-1]
        d_h = d_h_n[:n] + d_hidden[last : last + n]  # (n, H) δh_T of the rows that run to the end
        for t in range(len(sizes) - 1, -1, -1):
            n, rows = sizes[t], slice(starts[t], starts[t] + sizes[t])
            c_prev = ctx.first_cell[:n] if t == 0 else cells[starts[t - 1] : starts[t - 1] + n]
            _gate_gradients(d_gates[rows], d_h, d_c[:n], gates[t], c_prev, tanh_cells[rows])
            if t > 0:
                previous = slice(starts[t - 1], starts[t - 1] + sizes[t - 1])
                d_h = recurrent(d_gates[rows], d_hidden[previous][:n])  # δh_{t-1} = ∂L/∂h_{t-1} + δA_t W_h
                if sizes[t - 1] > n:  # rows whose last step is t-1 join here, from δh_n
                    d_h = torch.cat([d_h, d_h_n[n : sizes[t - 1]] + d_hidden[previous][n:]])
        d_h_0 = recurrent(d_gates[: sizes[0]]) if wants[6] else None  # δh_0 = δA_1 W_h
        d_x = gemm.linear(d_gates, weight_ih.t()) if wants[0] else None  # δx_t = δA_t W_x
        d_weight_ih = gemm.weight_gradient(d_gates, x) if wants[2] else None  # δW_x = Σ_t δA_tᵀ x_t
        d_weight_hh = _recurrent_weight_gradient(d_gates, h_0, hidden, sizes, starts) if wants[3] else None
        d_bias = torch.mv(d_gates.t(), d_gates.new_ones(d_gates.shape[0]))  # (4H,) δb = Σ_t δA_t (a GEMV)
        return d_x, None, d_weight_ih, d_weight_hh, d_bias, d_bias.clone(), d_h_0, (d_c if wants[7] else None)


def decoding_step(owner: nn.Module, layer: int, x: Tensor, h: Tensor, c: Tensor,
                  weights: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """One step of one layer without autograd (decoding): lstm_cell's equations, ONE GEMM on [x_t; h_{t-1}].

    [W_x | W_h] and b_x + b_h are joined (and packed for oneDNN on CPU) once, then reused for every step
    while the parameters are unchanged (same storage, same version counter): a whole beam search, all its
    steps and rows, shares them. x (B, E), h and c (B, H) -> (h_t, c_t)."""
    B, H = h.shape
    # Parameters made under torch.inference_mode keep no version counter, so an in-place change would go
    # unseen: join them afresh at every step (slower, never stale).
    cacheable = not any(w.is_inference() for w in weights.values())
    version = tuple((w.data_ptr(), w._version) for w in weights.values()) if cacheable else None
    joined = _DECODING.setdefault(owner, {}) if cacheable else {}
    if len(joined) > 16:  # many batch sizes seen (e.g. a demo): start afresh rather than grow
        joined.clear()
    entry = joined.get((layer, B))
    if entry is None or entry[0] != version:
        weight = torch.cat([weights["weight_ih"], weights["weight_hh"]], dim=1)  # (4H, E+H) [W_x | W_h]
        entry = (version, gemm.StepWeight(weight, B, bias=weights["bias_ih"] + weights["bias_hh"]))
        joined[(layer, B)] = entry
    gate = entry[1](torch.cat([x, h], dim=1))  # (B, 4H) A_t = [W_x | W_h] [x_t; h_{t-1}] + b
    c_t, tanh_c, h_t = h.new_empty(B, H), h.new_empty(B, H), h.new_empty(B, H)
    return _cell_step(gate, c, c_t, tanh_c, h_t), c_t


def _starts(batch_sizes: tuple[int, ...]) -> list[int]:
    """The first packed row of each step."""
    starts, start = [], 0
    for n in batch_sizes:
        starts.append(start)
        start += n
    return starts


def _final_rows(packed: Tensor, batch_sizes: tuple[int, ...]) -> Tensor:
    """(B, H): each row's entry at its own last step. Rows run by decreasing length, so rows
    batch_sizes[t+1] .. batch_sizes[t]-1 end at step t."""
    starts, pieces = _starts(batch_sizes), []
    for t in range(len(batch_sizes) - 1, -1, -1):
        ended = batch_sizes[t + 1] if t + 1 < len(batch_sizes) else 0
        if batch_sizes[t] > ended:
            pieces.append(packed[starts[t] + ended : starts[t] + batch_sizes[t]])
    return torch.cat(pieces)


def _recurrent_weight_gradient(d_gates: Tensor, h_0: Optional[Tensor], hidden: Tensor,
                               batch_sizes: tuple[int, ...], starts: list[int]) -> Tensor:
    """δW_h = Σ_t δA_tᵀ h_{t-1} as one GEMM; with a zero initial state the t = 1 term vanishes."""
    B = batch_sizes[0]
    if batch_sizes[-1] == B:  # every row runs every step: h_{t-1} of step t's rows is one view
        previous = hidden[: hidden.shape[0] - B]
    else:  # step t's rows are the first batch_sizes[t] rows of step t-1
        previous = torch.cat([hidden[starts[t - 1] : starts[t - 1] + batch_sizes[t]]
                              for t in range(1, len(batch_sizes))])
    if h_0 is None:  # h_0 = 0: pair δA_2 .. δA_T with h_1 .. h_{T-1}
        return gemm.weight_gradient(d_gates[B:], previous)
    return gemm.weight_gradient(d_gates, torch.cat([h_0, previous]))  # (N, H) h_0 .. h_{T-1}


def _cell_step(gate: Tensor, c_prev: Tensor, c_out: Tensor, tanh_out: Tensor, h_out: Tensor) -> Tensor:
    """lstm_cell's equations in place on the (B, 4H) pre-activations; writes c_t, tanh(c_t), h_t.

    tanh(z) is computed as 2σ(2z) − 1 (the same function): torch's CPU tanh is scalar code, its sigmoid is
    vectorised, so one sigmoid over all four gates and one more for tanh(c_t) are about 3x cheaper."""
    H = c_prev.shape[1]
    minus_one = _constant(-1.0, gate)
    gate[:, 2 * H : 3 * H].mul_(2)  # the g block becomes 2 a_g, so that σ below gives σ(2 a_g)
    gate.sigmoid_()  # i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o), all gates in one op
    i, f, g, o = gate.chunk(4, dim=1)  # 4 x (B, H) views
    torch.addcmul(minus_one, g, _constant(2.0, g), out=g)  # g_t = tanh(a_g) = 2σ(2 a_g) − 1
    c = torch.mul(f, c_prev, out=c_out).addcmul_(i, g)  # c_t = f ⊙ c_{t-1} + i ⊙ g
    s_c = torch.mul(c, 2, out=tanh_out).sigmoid_()  # σ(2 c_t)
    tanh_c = torch.addcmul(minus_one, s_c, _constant(2.0, s_c), out=tanh_out)  # tanh(c_t) = 2σ(2 c_t) − 1
    return torch.mul(o, tanh_c, out=h_out)  # h_t = o ⊙ tanh(c_t)


def _gate_gradients(d_gate: Tensor, d_h: Tensor, d_c: Tensor, gate: Tensor, c_prev: Tensor,
                    tanh_c: Tensor) -> None:
    """One step back: write δA_t into d_gate (B, 4H) and turn d_c from δc_{t+1}-carried into δc_{t-1}.

    Few passes over memory: σ' = σ(1 − σ) of all four gates is one op on the (B, 4H) tile (then the g block
    is overwritten with tanh' = 1 − g²), and δc_t multiplies the i, f, g blocks in one broadcast op."""
    B, H = d_h.shape
    one = _constant(1.0, d_h)
    torch.addcmul(gate, gate, gate, value=-1, out=d_gate)  # (B, 4H) σ(1 − σ): i', f', ·, o'
    i, f, g, o = gate.chunk(4, dim=1)  # 4 x (B, H) activations saved by the forward pass
    d_i, d_f, d_g, d_o = d_gate.chunk(4, dim=1)  # 4 x (B, H) views, turned into δa_* below
    torch.addcmul(one, g, g, value=-1, out=d_g)  # g' = 1 − g²
    d_c.addcmul_(d_h * o, torch.addcmul(one, tanh_c, tanh_c, value=-1))  # δc_t += δh_t ⊙ o ⊙ (1 − tanh² c_t)
    d_o.mul_(d_h).mul_(tanh_c)  # δa_o = δh_t ⊙ tanh c_t ⊙ o'
    d_gate.view(B, 4, H)[:, :3].mul_(d_c.unsqueeze(1))  # (B, 3, H) δc_t ⊙ (i', f', g')
    d_i.mul_(g)  # δa_i = δc_t ⊙ g ⊙ i'
    d_f.mul_(c_prev)  # δa_f = δc_t ⊙ c_{t-1} ⊙ f'
    d_g.mul_(i)  # δa_g = δc_t ⊙ i ⊙ g'
    d_c.mul_(f)  # carried to step t-1: δc_t ⊙ f_t


def _constant(value: float, like: Tensor) -> Tensor:
    """A cached 1-element tensor holding `value` on like's device and dtype, for addcmul's broadcast input:
    addcmul(1, x, x, value=-1) = 1 − x², addcmul(−1, s, 2) = 2s − 1 (one op instead of two)."""
    key = (value, like.device, like.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.full((1,), value, device=like.device, dtype=like.dtype)
    return _CONSTANTS[key]
