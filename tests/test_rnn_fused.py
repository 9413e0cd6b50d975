"""Proves captioner/rnn/fused.py (hand-written BPTT) and captioner/rnn/gemm.py against the same oracles as
the readable cells: torch's nn.LSTM, the per-gate equation reference of tests/test_rnn_cells.py, the readable
path itself (fast=False), and torch.autograd.gradcheck. Every oracle runs with oneDNN products on and off.
"""
from __future__ import annotations

import pytest
import torch
from test_rnn_cells import (
    SHAPES,
    _assert_close,
    _inputs,
    _lengths,
    _run_and_grad,
    _run_ours,
    _run_packed,
    _run_torch,
    assert_matches_equations,
)
from torch import nn

from captioner.rnn import fused, gemm
from captioner.rnn.recorder import recording
from captioner.rnn.stacked import StackedLSTM

SHAPE_IDS = ["B{}T{}E{}H{}L{}{}{}".format(*s[:5], "bi" if s[5] else "", "state" if s[6] else "") for s in SHAPES]
ONEDNN = [pytest.param(True, id="onednn"), pytest.param(False, id="addmm")]  # for the `onednn` fixture


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def onednn(request, monkeypatch):
    """Parametrised: True = oneDNN products even at these tiny sizes (its threshold lowered), False = addmm."""
    monkeypatch.setattr(gemm, "ONEDNN_MIN_MACS", 1)
    with gemm.use_onednn(request.param):
        yield request.param


@pytest.fixture
def calls(monkeypatch):
    """Counts how often the fast layer Function runs."""
    counter = {"fast": 0}
    original = fused.LSTMLayerFunction.apply

    def counting(*args):
        counter["fast"] += 1
        return original(*args)
    monkeypatch.setattr(fused.LSTMLayerFunction, "apply", counting)
    return counter


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])  # packed: captions of many lengths
@pytest.mark.parametrize("onednn", ONEDNN, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fast_path_matches_torch_values_and_every_gradient(shape, onednn, packed, calls):
    B, T, E, H, L, bidirectional, with_state = shape
    oracle = nn.LSTM(E, H, L, batch_first=True, bidirectional=bidirectional)
    ours = StackedLSTM(E, H, L, bidirectional=bidirectional, fast=True)
    ours.load_state_dict(oracle.state_dict())
    x, state = _inputs(B, T, E, H, L, bidirectional, with_state)
    lengths = _lengths(B, T)
    our_run = _run_packed(ours, lengths) if packed else _run_ours(ours)
    reference_run = _run_packed(oracle, lengths) if packed else _run_torch(oracle, "lstm")
    our_values, our_grads = _run_and_grad(ours, x, state, our_run)
    reference_values, reference_grads = _run_and_grad(oracle, x, state, reference_run)
    assert calls["fast"] == L * (2 if bidirectional else 1), "the fast path did not run"
    _assert_close(dict(enumerate(our_values)), dict(enumerate(reference_values)), 1e-5, "fast lstm values")
    _assert_close(our_grads, reference_grads, 1e-5, "fast lstm gradients")


@pytest.mark.parametrize("shape", SHAPES[1:], ids=SHAPE_IDS[1:])
def test_fast_path_matches_equation_reference_in_float64(shape, calls):
    B, T, E, H, L, bidirectional, with_state = shape
    assert_matches_equations(StackedLSTM(E, H, L, bidirectional=bidirectional, fast=True), shape, "fast lstm")
    assert calls["fast"] > 0


@pytest.mark.parametrize("onednn", ONEDNN, indirect=True)
@pytest.mark.parametrize("with_state", [False, True])
def test_fast_equals_readable_path_at_a_decoder_like_shape(onednn, with_state):
    """Both of our paths on one module, dropout between layers included (same seed, same masks)."""
    module = StackedLSTM(24, 40, 3, dropout=0.3)
    x, state = _inputs(16, 9, 24, 40, 3, False, with_state)
    results = {}
    for fast in (True, False):
        module.fast = fast
        torch.manual_seed(5)
        results[fast] = _run_and_grad(module, x, state, _run_ours(module))
    _assert_close(dict(enumerate(results[True][0])), dict(enumerate(results[False][0])), 1e-5, "values")
    _assert_close(results[True][1], results[False][1], 1e-5, "gradients")


@pytest.mark.parametrize("with_state", [False, True])
def test_layer_function_passes_gradcheck(with_state):
    T, B, E, H = 4, 3, 5, 4
    x = torch.randn(T * B, E, dtype=torch.float64, requires_grad=True)  # time-major: step t is rows tB .. tB+B-1
    weights = [(torch.randn(shape, dtype=torch.float64) * 0.5).requires_grad_()
               for shape in [(4 * H, E), (4 * H, H), (4 * H,), (4 * H,)]]
    state = [None, None]
    if with_state:
        state = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2)]

    def run(x, *rest):
        return fused.LSTMLayerFunction.apply(x, (B,) * T, *rest)
    assert torch.autograd.gradcheck(run, (x, *weights, *state), eps=1e-6, atol=1e-7)


def test_dispatch_and_switch(calls):
    x = torch.randn(2, 3, 4)
    StackedLSTM(4, 5, 2)(x)
    assert calls["fast"] == 2
    StackedLSTM(4, 5, 2, fast=False)(x)
    for cell in ("rnn", "peephole", "coupled", "gru"):
        StackedLSTM(4, 5, 2, cell=cell)(x)
    StackedLSTM(4, 5, 2).to(torch.bfloat16)(x.to(torch.bfloat16))  # no fast path for bfloat16
    assert calls["fast"] == 2, "only the plain LSTM in float32/float64 takes the fast path"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.fast_path_applies(x, "lstm")
    assert fused.fast_path_applies(x, "lstm") and not fused.fast_path_applies(x, "gru")


def test_inference_and_frozen_weights():
    module = StackedLSTM(6, 7, 2)
    x = torch.randn(3, 5, 6, requires_grad=True)
    with torch.no_grad():
        expected = module(x)[0]
    assert torch.equal(module(x)[0].detach(), expected)
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # a frozen decoder: only the input wants a gradient
    output, (h_n, c_n) = module(x)
    (output.sum() + c_n.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    reference = StackedLSTM(6, 7, 2, fast=False)
    reference.load_state_dict(module.state_dict())
    x_reference = x.detach().clone().requires_grad_()
    output, (h_n, c_n) = reference(x_reference)
    (output.sum() + c_n.sum()).backward()
    assert (x.grad - x_reference.grad).abs().max() <= 1e-5


def test_second_derivative_is_refused_clearly():
    module = StackedLSTM(3, 4)
    x = torch.randn(2, 3, 3, requires_grad=True)
    (gradient,) = torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|does not require grad"):
        gradient.sum().backward()


@pytest.mark.parametrize("onednn", ONEDNN, indirect=True)
def test_gemm_helpers_match_torch(onednn, monkeypatch):
    x, weight, bias = torch.randn(10, 6), torch.randn(8, 6), torch.randn(8)
    other, d_output = torch.randn(10, 8), torch.randn(10, 8)
    assert torch.allclose(gemm.linear(x, weight, bias), x @ weight.t() + bias, atol=1e-5)
    assert torch.allclose(gemm.linear(x, weight), x @ weight.t(), atol=1e-5)
    assert torch.allclose(gemm.weight_gradient(d_output, x), d_output.t() @ x, atol=1e-5)
    step = gemm.StepWeight(weight, batch_size=10)
    assert (step.packed is not None) == (onednn and gemm.ONEDNN_AVAILABLE)
    assert torch.allclose(step(x, other), x @ weight.t() + other, atol=1e-5)
    assert torch.allclose(step(x), x @ weight.t(), atol=1e-5)
    transposed = gemm.StepWeight(weight.t(), batch_size=10)  # a non-contiguous view, as in backward
    assert torch.allclose(transposed(d_output), d_output @ weight, atol=1e-5)
    assert not gemm.onednn_applies(x.double())
    monkeypatch.undo()  # the real threshold again
    assert not gemm.onednn_applies(x, macs=1000), "a tiny product should stay with addmm"
    assert gemm.onednn_applies(x, macs=64 * 2048 * 512) == (onednn and gemm.ONEDNN_AVAILABLE)


@pytest.mark.parametrize("onednn", ONEDNN, indirect=True)
def test_decoding_step_matches_readable_step_and_follows_weight_changes(onednn):
    module = StackedLSTM(6, 8, 2)
    reference = StackedLSTM(6, 8, 2, fast=False)
    reference.load_state_dict(module.state_dict())
    x_t, state = torch.randn(5, 6), (torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    for _ in range(2):  # the second round changes the weights: the cached joined weights must follow
        with torch.no_grad():
            top, (h, c) = module.step(x_t, state)
            expected_top, (expected_h, expected_c) = reference.step(x_t, state)
            assert fused._DECODING.get(module), "decoding did not take the fast step"
            for ours, theirs in ((top, expected_top), (h, expected_h), (c, expected_c)):
                assert (ours - theirs).abs().max() <= 1e-5
            for parameter, twin in zip(module.parameters(), reference.parameters()):
                parameter.add_(0.1)  # as an optimizer step would, in place
                twin.add_(0.1)


def test_decoding_a_model_built_under_inference_mode_follows_in_place_changes():
    # Parameters created under torch.inference_mode are inference tensors: they have no version counter
    # (reading it raises), so nothing may be cached for them, and an in-place change must still show.
    with torch.inference_mode():
        module = StackedLSTM(6, 8, 2)
        reference = StackedLSTM(6, 8, 2, fast=False)
        reference.load_state_dict(module.state_dict())
        x_t, state = torch.randn(5, 6), (torch.randn(2, 5, 8), torch.randn(2, 5, 8))
        for _ in range(2):
            top, _ = module.step(x_t, state)
            expected_top, _ = reference.step(x_t, state)
            assert (top - expected_top).abs().max() <= 1e-5
            for parameter, twin in zip(module.parameters(), reference.parameters()):
                parameter.add_(0.1)
                twin.add_(0.1)
    assert module not in fused._DECODING


def test_step_with_gradients_or_records_keeps_the_readable_cell():
    module = StackedLSTM(6, 8, 1)
    x_t = torch.randn(3, 6, requires_grad=True)
    top, _ = module.step(x_t, None)  # training through step (the attention decoder): autograd must see it
    top.sum().backward()
    assert x_t.grad is not None and module not in fused._DECODING
    with torch.no_grad(), recording(module) as steps:
        module.step(x_t, None)
    assert set(steps[0][0]) == set("ifgoch") and module not in fused._DECODING
