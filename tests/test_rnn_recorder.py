"""The one activation recorder (captioner/rnn/recorder.py): what StackedLSTM's cells computed at each
step, kept for this thread only, with decoding unchanged; the attention decoders use the same recorder
(tests/test_attention_maps.py)."""
from __future__ import annotations

import threading

import pytest
import torch

from captioner.rnn.recorder import record, recording
from captioner.rnn.stacked import StackedLSTM


@pytest.mark.parametrize("cell,keys", [("rnn", {"h"}), ("lstm", set("ifgoch")), ("peephole", set("ifgoch")),
                                       ("coupled", set("ifgoch")), ("gru", {"r", "z", "n", "h"})])
def test_step_records_gate_activations(cell, keys):
    module = StackedLSTM(4, 5, 2, cell=cell)
    x_t = torch.randn(3, 4)
    with recording(module) as steps:
        top, state = module.step(x_t, None)
    plain_top, plain_state = module.step(x_t, None)
    assert len(steps) == 1
    layers = steps[0]
    assert len(layers) == 2 and all(set(layer) == keys for layer in layers)
    assert torch.equal(layers[-1]["h"], top) and torch.equal(top, plain_top)
    assert torch.equal(state[0], plain_state[0]) and torch.equal(layers[0]["h"], state[0][0])
    if "c" in keys:
        assert torch.equal(layers[1]["c"], state[1][1])
    if cell == "coupled":
        assert torch.allclose(layers[0]["i"], 1 - layers[0]["f"])
    for layer in layers:
        assert all(value.shape == (3, 5) and not value.requires_grad for value in layer.values())


def test_recording_is_per_module_and_thread_and_refuses_nesting():
    module, other = StackedLSTM(4, 5), StackedLSTM(4, 5)
    x_t = torch.randn(2, 4)
    elsewhere: list = []
    with recording(module) as steps:
        with pytest.raises(RuntimeError, match="already recording this StackedLSTM"):
            with recording(module):
                pass
        other.step(x_t)  # another module: not recorded here
        thread = threading.Thread(target=lambda: elsewhere.append(module.step(x_t)))
        thread.start()
        thread.join()  # another thread: not recorded here
        module.step(x_t)
    module.step(x_t)  # after the block: not recorded
    assert len(steps) == 1 and len(elsewhere) == 1


def test_record_outside_a_block_is_dropped():
    module = object()
    record(module, "dropped")
    with recording(module) as steps:
        record(module, "kept")
    assert steps == ["kept"]
