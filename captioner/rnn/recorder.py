"""One thread-local recorder of what a module computes at each step, for the views that show it:
StackedLSTM's gate activations ("Inside the LSTM") and the attention decoders' weights α_t (the
attention maps).

    with recording(model.decoder.rnn) as steps:   # this thread only
        model.generate(...)                       # steps: one entry per step, as the module records it

A module records with `record(self, value)` at each step; outside a `recording()` block that costs one
thread-local look-up. Thread-local, so a model shared by a web server keeps serving other requests
unrecorded meanwhile. No decoder math is repeated by the views: they read what the step computed.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_SINKS = threading.local()  # .by_module: id(module) -> the list its steps are recorded into, this thread only


@contextmanager
def recording(module: object) -> Iterator[list[Any]]:
    """Inside the block, every step `module` runs on this thread appends what it records to the list."""
    sinks = getattr(_SINKS, "by_module", None)
    if sinks is None:
        sinks = _SINKS.by_module = {}
    if id(module) in sinks:
        raise RuntimeError(f"recording: already recording this {type(module).__name__} on this thread")
    steps: list[Any] = []
    sinks[id(module)] = steps
    try:
        yield steps
    finally:
        del sinks[id(module)]


def is_recording(module: object) -> bool:
    return id(module) in getattr(_SINKS, "by_module", {})


def record(module: object, value: Any) -> None:
    """Append `value` (a tensor detached) to the list of the `recording(module)` block this thread is in,
    if any."""
    sink = getattr(_SINKS, "by_module", {}).get(id(module))
    if sink is not None:
        sink.append(value.detach() if isinstance(value, torch.Tensor) else value)
