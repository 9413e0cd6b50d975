"""Typed configuration: dataclasses with a comment per field, loaded from YAML, overridden from the CLI.

    config = load_config("configs/shapes.yaml", ["train.epochs=3", "model.cell=gru"])

Unknown keys, wrong types, a string outside its `Literal[...]` choices and numbers outside their range
(`RANGES`) are refused with a `ConfigError` that names the dotted key path, when the config is loaded:
before anything is written or allocated.
YAML is read with `yaml.safe_load`, so `!!python/...` tags are refused too. The resolved config is
saved inside every checkpoint (`to_dict`) and rebuilt from it (`from_dict`).
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml

from captioner.decoding import Decoding
from captioner.files import write_atomically

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

T = TypeVar("T")
Cell = Literal["rnn", "lstm", "peephole", "coupled", "gru"]  # also the scorer's (captioner/scorer/training.py)
ImageFit = Literal["crop", "stretch"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key path."""


# The defaults are the settings for photo datasets (configs/flickr8k.yaml and its siblings start from
# them). The default run, configs/shapes.yaml, differs where a field's comment names shapes.yaml.


@dataclass
class SyntheticConfig:
    """The built-in shapes dataset, generated on first use (captioner/data/shapes.py)."""

    num_train: int = 6000  # training images
    num_val: int = 500  # validation images (BLEU after each epoch)
    num_test: int = 500  # test images (final metrics)
    image_size: int = 64  # side of the square JPEGs, in pixels
    seed: int = 0  # same seed and parameters -> byte-identical files


@dataclass
class DataConfig:
    format: Literal["shapes", "karpathy", "flickr8k", "coco", "folder", "auto"] = "shapes"  # auto: from the files
    root: str = "data/shapes"  # dataset directory; relative paths are relative to the working directory
    captions_file: str = ""  # captions/annotations file inside root; "" = the format's usual name
    images_dir: str = ""  # image directory inside root; "" = the format's usual name
    use_restval: bool = True  # Karpathy JSON: merge the "restval" split into train
    split_seed: int = 0  # seed of the random split when a format ships no split lists
    val_fraction: float = 0.1  # share of images for val in a random split
    test_fraction: float = 0.1  # share of images for test in a random split
    max_bad_images: float = 0.01  # missing/undecodable images skipped up to this share; above it, abort
    min_word_count: int = 5  # rarer words in the train split become <unk> (shapes.yaml: 1, a closed vocabulary)
    max_caption_length: int = 20  # training captions are cut to this many words
    feature_cache: bool = True  # with a fully frozen encoder, encode each image once to disk and train on that
    feature_cache_dir: str = ""  # where the cache lives; "" = <data.root>/.cache/features
    feature_dtype: Literal["float32", "float16"] = "float32"  # stored features: exact | half the disk
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: str = "small_cnn"  # small_cnn, efficientnet_lite0 or _lite2, or a torchvision model name (resnet18, ...)
    pretrained: bool = False  # load ImageNet weights for the backbone (small_cnn has none)
    freeze_encoder: bool = False  # keep the backbone fixed (enables the feature cache)
    finetune_blocks: int = 0  # with a frozen encoder, still train its last N blocks
    embed_size: int = 256  # word embedding and projected image feature size E (shapes.yaml: 128 for 64 px scenes)
    hidden_size: int = 512  # LSTM state size H (shapes.yaml: 256)
    num_layers: int = 1  # stacked recurrent layers
    cell: Cell = "lstm"  # the recurrence (captioner/rnn/cells.py)
    dropout: float = 0.3  # on embeddings, between layers and before the output layer (shapes.yaml: 0.1, 6000 scenes)
    image_as: Literal["first_input", "initial_state"] = "first_input"  # Show and Tell | h_0, c_0 = tanh(W f)
    attention: bool = False  # soft attention over the encoder's map (Show, Attend and Tell; shapes.yaml: true)
    attention_query: Literal["previous", "current"] = "previous"  # previous: h_{t-1} looks (shapes.yaml: current),
    #   context into the LSTM (Xu et al. 2015) | current: h_t looks, context into the output (Lu et al. 2017),
    #   no loop over time
    attention_size: int = 0  # width A of the attention MLP w^T tanh(W_k V + W_q h); 0 = embed_size (shapes.yaml: 64)
    image_fit: ImageFit = "crop"  # how a photo becomes the backbone's square input: centre crop | stretch whole
    image_size: int = 0  # side of the backbone's input in pixels; 0 = the size it was trained at
    region_positions: bool = True  # add a learned embedding of each region's grid cell (attention.py)


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training captions (shapes.yaml: 9)
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    batch_size: int = 32  # images per step
    captions_per_image: int = 5  # captions trained per image in a step (the image is encoded once)
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = 2e-3  # peak learning rate of the decoder and a trainable encoder (shapes.yaml: 5e-3)
    encoder_learning_rate: float = 1e-4  # learning rate of fine-tuned pretrained blocks
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100  # linear warm-up before the schedule
    grad_clip: float = 5.0  # clip the global gradient norm to this (0 = off)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (bfloat16 matmuls, fp32 weights, no loss scaling)
    scale_lr: bool = False  # under torchrun, multiply the learning rates by the number of processes
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    scheduled_sampling: float = 0.0  # share of input words replaced by the model's own sampled guesses
    self_critical_epochs: int = 0  # then this many epochs of self-critical training with a CIDEr-D reward
    self_critical_learning_rate: float = 5e-5  # constant learning rate of those epochs (encoder's scaled alike)
    self_critical_samples: int = 5  # captions sampled per image; each one's baseline is the others' mean reward
    self_critical_reward: Literal["cider", "bleu4"] = "cider"  # CIDEr-D | smoothed sentence BLEU-4
    seed: int = 0  # seeds python, torch and the data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader worker processes for image decoding
    threads: int = 0  # torch CPU threads (0 = one per core free at the start, devices.free_cores)
    val_max_images: int = 0  # validate on at most this many images (0 = all)
    checkpoint_metric: Literal["bleu4", "cider", "epoch"] = "bleu4"  # the validation metric that chooses best.pt
    #   (cider: CIDEr-D; epoch: the last epoch, for a validation split of a few photos, which chooses by noise)
    log_every: int = 50  # steps between progress-bar updates of the loss (and TensorBoard points)
    tensorboard: bool = False  # also log to <run_dir>/tensorboard (needs the `tensorboard` extra)
    init_from: str = ""  # fine-tune: a release (shipped name or directory) or a .pt checkpoint gives the model
    #   and its words, the data adds words (captioner/training/init_from.py); "" = train from scratch
    new_word_init: Literal["mean", "unk", "normal"] = "normal"  # rows of the words init_from lacks: the mean of its
    #   rows | a copy of its <unk> row | random normal at its rows' mean and scale


@dataclass
class EvalConfig:
    beam_size: int = 3  # beam width for test metrics (1 = greedy)
    val_beam_size: int = 1  # beam width for the per-epoch validation BLEU
    max_length: int = 20  # longest generated caption, in words
    no_repeat_ngram_size: int = 0  # beam search never repeats an n-gram within a caption (0 = off; 3 = trigrams)
    no_repeat_content_words: bool = True  # beam search says a word outside vocab.FUNCTION_WORDS once (shapes.yaml: false)
    content_word_repeat_penalty: float = 0.0  # else: subtracted from log p of a content word a beam already holds
    length_penalty: float = 0.0  # beam search ranks finished captions by log p / length**alpha (0 = raw log p)
    allow_unknown_word: bool = False  # let captions hold <unk> (the raw model); <pad> and <start> are never generated
    batch_size: int = 100  # images per generation batch
    meteor: bool = True  # score METEOR in the test evaluation (Java, once; left out with a note without it)

    def decoding(self) -> Decoding:
        """The settings above as `Captioner.generate` takes them (beam_size, not val_beam_size)."""
        return Decoding(beam_size=self.beam_size, max_length=self.max_length,
                        no_repeat_ngram_size=self.no_repeat_ngram_size,
                        no_repeat_content_words=self.no_repeat_content_words,
                        content_word_repeat_penalty=self.content_word_repeat_penalty,
                        length_penalty=self.length_penalty, allow_unknown_word=self.allow_unknown_word)


@dataclass
class Config:
    run_dir: str = "runs/shapes"  # checkpoints, metrics.json and the log go here
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# The values each number field accepts, in interval notation: "[1, inf)" means >= 1, "(0, inf)" means > 0,
# "[0, 1)" means 0 <= x < 1. A value outside (NaN included) is refused when the config is loaded.
RANGES: dict[str, str] = {
    "data.val_fraction": "[0, 1)", "data.test_fraction": "[0, 1)", "data.max_bad_images": "[0, 1]",
    "data.min_word_count": "[1, inf)", "data.max_caption_length": "[1, inf)",
    "data.synthetic.num_train": "[1, inf)", "data.synthetic.num_val": "[0, inf)",
    "data.synthetic.num_test": "[0, inf)", "data.synthetic.image_size": "[8, inf)",
    "model.finetune_blocks": "[0, inf)", "model.embed_size": "[1, inf)", "model.hidden_size": "[1, inf)",
    "model.num_layers": "[1, inf)", "model.dropout": "[0, 1)", "model.attention_size": "[0, inf)",
    "model.image_size": "[0, 2048]",  # the encoder runs once at this side when the model is built
    "train.epochs": "[0, inf)", "train.max_steps": "[0, inf)", "train.batch_size": "[1, inf)",
    "train.captions_per_image": "[1, inf)", "train.learning_rate": "(0, inf)",
    "train.encoder_learning_rate": "[0, inf)", "train.weight_decay": "[0, inf)", "train.warmup_steps": "[0, inf)",
    "train.grad_clip": "[0, inf)", "train.label_smoothing": "[0, 1)", "train.scheduled_sampling": "[0, 1]",
    "train.self_critical_epochs": "[0, inf)", "train.self_critical_learning_rate": "(0, inf)",
    "train.self_critical_samples": "[2, inf)",  # each sample's baseline is the mean of the others
    "train.num_workers": "[0, 256]", "train.threads": "[0, 1024]",  # a process, a thread each: not 100,000
    "train.val_max_images": "[0, inf)", "train.log_every": "[1, inf)",
    "eval.beam_size": "[1, inf)", "eval.val_beam_size": "[1, inf)", "eval.max_length": "[1, inf)",
    "eval.no_repeat_ngram_size": "[0, inf)", "eval.batch_size": "[1, inf)",
    "eval.content_word_repeat_penalty": "[0, inf]",  # inf: never twice, as no_repeat_content_words
    "eval.length_penalty": "[0, 5]",
}
_INTERVAL = re.compile(r"([\[(])(-?[\d.]+|-inf), (-?[\d.]+|inf)([\])])")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path`, then dotted `key=value` overrides; ranges checked."""
    return check_ranges(load_dataclass(Config, path, overrides))


def check_ranges(config: Config) -> Config:
    """`config` itself, once every field named in RANGES lies in its interval; else the first offender."""
    values = to_dict(config)
    for path, interval in RANGES.items():
        value = values
        for key in path.split("."):
            value = value[key]
        if not in_interval(value, interval):
            raise ConfigError(f"{path}={value!r}: expected a value in {interval}")
    return config


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` lies in `interval`, written as in RANGES; NaN lies in none."""
    opening, low, high, closing = _INTERVAL.fullmatch(interval).groups()
    low_ok = value >= float(low) if opening == "[" else value > float(low)
    high_ok = value <= float(high) if closing == "]" else value < float(high)
    return bool(low_ok and high_ok)


def load_dataclass(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """The one config loader, for any tree of config dataclasses (the captioner's `Config`, the
    scorer's): defaults, then the YAML file, then dotted overrides, every key and type checked."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(values, key.split("."), value)
    return _build(cls, values, prefix="")


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested plain values, checking every key, type and range."""
    return check_ranges(_build(Config, values, prefix=""))


def to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict (YAML and `torch.load(weights_only=True)` safe)."""
    return dataclasses.asdict(config)


def save_yaml(config: Config, path: str | Path) -> None:
    write_atomically(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's plain mapping (`yaml.safe_load`), or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:  # includes !!python/... tags, which safe_load refuses
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path}: not a plain YAML config ({first_line})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a plain YAML config (nested too deeply)") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(values).__name__}")
    return values


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw  # an unparseable value is taken as a string; the type check decides
    return key.strip(), value


def _set_dotted(values: dict[str, Any], keys: list[str], value: Any) -> None:
    for index, key in enumerate(keys[:-1]):
        child = values.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: index + 1])}: is a value, not a section")
        values = child
    values[keys[-1]] = value


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a section (mapping), got {values!r:.80}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        path = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{path}: unknown key (known keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(expected):
            kwargs[name] = _build(expected, value, prefix=f"{path}.")
        else:
            kwargs[name] = _check_type(value, expected, path)
    return cls(**kwargs)


def _check_type(value: Any, expected: Any, path: str) -> Any:
    if typing.get_origin(expected) is Literal:
        choices = typing.get_args(expected)
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{path}={value!r}: expected one of {', '.join(choices)}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 2e-4 (no dot) as a string; everyone means the number
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. device=0 or a numeric run name
    if type(value) is not expected:
        raise ConfigError(f"{path}: expected {expected.__name__}, got {type(value).__name__} {value!r:.80}")
    return value
