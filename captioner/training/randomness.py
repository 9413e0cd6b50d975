"""The run's randomness: seeding, and the RNG snapshots a checkpoint carries so that a resumed run
draws the same dropout masks and samples as an uninterrupted one."""
from __future__ import annotations

import random
from typing import Any

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_rng_state(state: Any) -> None:
    """Raise unless `state` is what `rng_state` returns: tried on throwaway generators, so a crafted
    checkpoint is refused before the run's own generators are touched."""
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
        raise ValueError("expected a mapping with a 'torch' tensor")
    torch.Generator().set_state(state["torch"])
    random.Random().setstate(_as_tuple(state["python"]))


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples; a save/load round trip may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

