"""Whether a model fits in memory, decided from its config alone, before the data is read.

`model.hidden_size=200000` is a valid number, but its LSTM alone holds 4H(E + H) = 160 billion
weights: without this check a run reads and checks its whole dataset and only then fails to
allocate. The model is built on the meta device (shapes, no memory) with the smallest vocabulary,
so the count is a lower bound: the real output layer only adds to it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from captioner.config import ConfigError, ModelConfig

BYTES_PER_TRAINED_WEIGHT = 16  # fp32 weight, its gradient and Adam's two moments
BYTES_PER_FROZEN_WEIGHT = 4  # fp32 weight only


def check_model_fits(config: ModelConfig, device: torch.device) -> None:
    """Refuse, naming the model's size keys, a model whose weights, gradients and Adam state alone
    exceed the memory `device` has available now."""
    from captioner.model import Captioner  # the model package is heavy; only a run needs it
    from captioner.vocab import Vocabulary

    with torch.device("meta"):  # no pretrained weights are read: their shapes are the same
        model = Captioner(dataclasses.replace(config, pretrained=False), Vocabulary([]))
    needed = sum(p.numel() * (BYTES_PER_TRAINED_WEIGHT if p.requires_grad else BYTES_PER_FROZEN_WEIGHT)
                 for p in model.parameters())
    available = available_memory(device)
    if available is not None and needed > available:
        raise ConfigError(f"model.embed_size={config.embed_size}, model.hidden_size={config.hidden_size}, "
                          f"model.num_layers={config.num_layers}: the model needs at least {_gigabytes(needed)} "
                          f"for its weights, gradients and Adam state, and {device} has {_gigabytes(available)} "
                          "available")


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now (CUDA: its free memory; CPU: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gigabytes(count: int) -> str:
    return f"{count / 2**30:,.1f} GB"
