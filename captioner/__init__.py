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
    if name in __all__:
        from captioner import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
