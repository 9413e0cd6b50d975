"""captioner: a CNN encoder feeding an explicit, hand-written stacked LSTM decoder.

    from captioner import load_checkpoint
    model = load_checkpoint("runs/shapes/best.pt", device="cpu")
    model.caption(images, beam_size=3)  # list[PIL.Image.Image] -> list[str]
"""
from __future__ import annotations

__all__ = ["load_checkpoint", "CheckpointError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import captioner.config` or `captioner.data` should not pay for importing torch.
    if name == "load_checkpoint":
        from captioner.model import load_checkpoint

        return load_checkpoint
    if name == "CheckpointError":
        from captioner.checkpoint import CheckpointError

        return CheckpointError
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
