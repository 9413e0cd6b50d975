"""Matrix products for the fast LSTM path (captioner/rnn/fused.py), nothing else.

On CPU in float32 they go to oneDNN, the library behind torch's own nn.LSTM on CPU, through torch's
`mkldnn::_linear_pointwise` op: measured on a 2-core AMD EPYC (Zen 4) it runs the LSTM's products
15-25% faster than `torch.addmm` (MKL). A weight that is used at every time step is reordered once into
oneDNN's blocked layout (`StepWeight`), which is what makes the small per-step GEMM (B=64 rows) fast.
Everywhere else (CUDA, float64, a torch built without oneDNN, and products too small for oneDNN's fixed
cost per call to pay off) the same products are `torch.addmm` / `torch.mm`; `use_onednn(False)` forces
that path, for tests and for benchmarks that compare the two.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor

_SETTINGS = {"onednn": True}  # switched by `use_onednn`
ONEDNN_MIN_MACS = 1 << 24  # multiply-adds per product below which addmm wins (measured: B=64, H=256 is even)


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


ONEDNN_AVAILABLE = _onednn_available()


@contextmanager
def use_onednn(enabled: bool) -> Iterator[None]:
    """Temporarily allow (True) or forbid (False) the oneDNN products; torch.addmm is the fallback."""
    previous = _SETTINGS["onednn"]
    _SETTINGS["onednn"] = enabled
    try:
        yield
    finally:
        _SETTINGS["onednn"] = previous


def onednn_applies(tensor: Tensor, macs: int = ONEDNN_MIN_MACS) -> bool:
    """oneDNN handles float32 CPU products of at least ONEDNN_MIN_MACS multiply-adds; else torch's GEMM."""
    return _SETTINGS["onednn"] and ONEDNN_AVAILABLE and tensor.device.type == "cpu" \
        and tensor.dtype == torch.float32 and macs >= ONEDNN_MIN_MACS


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x (N, I) @ weightᵀ (I, O) + bias -> (N, O)."""
    if onednn_applies(x, x.shape[0] * weight.numel()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()


def weight_gradient(d_output: Tensor, inputs: Tensor) -> Tensor:
    """Σ_n d_output[n]ᵀ inputs[n] -> (O, I), the gradient of a weight W in y = x Wᵀ, summed over all rows.

    Always torch.mm: oneDNN's "linear" wants a row-major input, and the transposed copies it would need
    (inputsᵀ in, the result back to (O, I)) cost as much as its faster GEMM saves (measured)."""
    return d_output.t() @ inputs


class StepWeight:
    """A weight W (O, I), and optionally a bias b (O,), applied at every time step as x Wᵀ + b + other,
    prepared once per sequence (or, for decoding, once while the weights stay unchanged)."""

    def __init__(self, weight: Tensor, batch_size: int, bias: Optional[Tensor] = None) -> None:
        self.weight, self.bias = weight, bias
        self.packed = None
        if onednn_applies(weight, batch_size * weight.numel()):  # reordered once into oneDNN's blocked layout
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch_size)

    def __call__(self, x: Tensor, other: Optional[Tensor] = None) -> Tensor:
        """x (B, I) @ Wᵀ (+ b) (+ other (B, O)) -> (B, O), a new tensor."""
        if self.packed is not None:
            if other is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")
        base = other if other is not None else self.bias
        result = x @ self.weight.t() if base is None else torch.addmm(base, x, self.weight.t())
        return result.add_(self.bias) if other is not None and self.bias is not None else result
