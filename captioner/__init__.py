"""captioner: a CNN encoder feeding an explicit, hand-written stacked LSTM decoder.

    from captioner import from_pretrained, load_checkpoint
    model = from_pretrained("flickr8k-sample-lite0")  # the photo model shipped inside the package
    model = load_checkpoint("runs/shapes/best.pt", device="cpu")  # or a run's checkpoint
    model.caption(images)  # list[PIL.Image.Image] -> list[str]
"""
from __future__ import annotations

__all__ = ["from_pretrained", "load_checkpoint", "CheckpointError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import captioner.config` or `captioner.data` should not pay for importing torch.
    if name == "load_checkpoint":
        from captioner.model import load_checkpoint

        return load_checkpoint
    if name == "from_pretrained":
        from captioner.release import from_pretrained

        return from_pretrained
    if name == "CheckpointError":
        from captioner.checkpoint import CheckpointError

        return CheckpointError
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
