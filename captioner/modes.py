"""`evaluating(module)`: eval mode for a block of code, the caller's mode restored afterwards.

Inference must run with dropout off and BatchNorm on its running statistics, but the caller may be
in the middle of training (validation, the feature cache, self-critical sampling), so the module's
own `training` flag is put back even when the block raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
