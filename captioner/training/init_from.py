"""Fine-tuning: a run that starts from a trained captioner (train.init_from) instead of from scratch.

The initial model is a release (`from_pretrained`: a shipped model's name or a release directory) or a
training checkpoint (a `.pt` file: `load_checkpoint`). It gives the run
- its model config. A model.* key left at its default takes the initial model's value; a key set to
  anything else must equal it, or the run is refused naming the key: the weights fit one shape only.
  model.pretrained is false, since every weight comes from the initial model;
- its vocabulary, extended: the initial words keep their ids, and the words of the new training
  captions that pass data.min_word_count and that it lacks follow, most frequent first;
- its weights: every tensor is the initial model's, except that the word embedding and the output
  layer gain one row per new word (VOCABULARY_ROWS), set by train.new_word_init:
    mean    the mean of the initial regular words' rows: an average word, neither likely nor unlikely
    unk     a copy of the <unk> row: where the model lacked a word it now has every new word's row
    normal  random normal draws with the initial words' mean and standard deviation per column
A resume continues its own checkpoint (model config, vocabulary and weights) and never reads
init_from again: the train.init_from it records is the one its run started from.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from captioner.checkpoint import CheckpointError
from captioner.config import Config, ConfigError, ModelConfig, from_dict
from captioner.model import Captioner, load_checkpoint
from captioner.release import from_pretrained
from captioner.vocab import SPECIAL_TOKENS, Vocabulary

# The tensors with one row per word id: they grow with the vocabulary, every other tensor keeps its shape.
VOCABULARY_ROWS = ("decoder.embedding.weight", "decoder.output.weight", "decoder.output.bias")


def load_initial_model(source: str) -> Captioner:
    """The model train.init_from names: a .pt training checkpoint, else a release (name or directory)."""
    path = Path(source)
    try:
        if path.suffix == ".pt" or path.is_file():
            return load_checkpoint(path)
        return from_pretrained(source)
    except CheckpointError as error:
        raise CheckpointError(f"train.init_from={source}: {error}") from None


def fine_tuning_start(config: Config, resumed: dict[str, Any] | None) -> tuple[Config, Captioner | None]:
    """(the run's config, the initial model whose weights to copy, or None). Without train.init_from
    the config is kept. A resume of a fine-tuning run takes the model config its checkpoint holds and
    loads no initial model; a new fine-tuning run loads it and takes its model config."""
    if resumed is not None:  # the run's own starting point, whatever train.init_from says now
        started_from = resumed["config"].get("train", {}).get("init_from", "")
        config = replace(config, train=replace(config.train, init_from=started_from))
        if not started_from:
            return config, None
        return adopt_model_config(config, from_dict({"model": resumed["config"]["model"]}).model), None
    if not config.train.init_from:
        return config, None
    initial = load_initial_model(config.train.init_from)
    return adopt_model_config(config, initial.config), initial


def adopt_model_config(config: Config, initial: ModelConfig) -> Config:
    """`config` with the initial model's model section; a model.* key set away from its default to a
    value other than the initial model's is refused, naming the key and both values."""
    defaults, chosen, given = asdict(ModelConfig()), asdict(config.model), asdict(initial)
    for key, value in chosen.items():
        if key != "pretrained" and value != defaults[key] and value != given[key]:
            raise ConfigError(f"model.{key}={value!r}: the model comes from train.init_from="
                              f"{config.train.init_from}, whose model.{key} is {given[key]!r}; "
                              "leave it out")
    return replace(config, model=replace(initial, pretrained=False))


def extended_vocabulary(initial: Vocabulary, captions: Iterable[str], min_count: int) -> Vocabulary:
    """The initial words with their ids, then the captions' words that pass `min_count` and are new."""
    found = Vocabulary.build(captions, min_count).words[len(SPECIAL_TOKENS):]
    old = initial.words[len(SPECIAL_TOKENS):]
    return Vocabulary([*old, *(word for word in found if word not in initial)])


def copy_initial_weights(model: Captioner, initial: Captioner, new_word_init: str) -> None:
    """Load every weight of `initial` into `model`, whose vocabulary extends `initial`'s (the rows of
    the new words: `new_rows`); any other difference is a CheckpointError naming the weight."""
    ours, theirs = model.state_dict(), initial.state_dict()
    if set(ours) != set(theirs):
        different = sorted(set(ours) ^ set(theirs))
        raise CheckpointError(f"train.init_from: weights do not match the model built from its config "
                              f"({different[:3]})")
    count = len(model.vocab) - len(initial.vocab)
    weights = {}
    for name, tensor in theirs.items():
        if name in VOCABULARY_ROWS:
            tensor = torch.cat([tensor, new_rows(tensor, count, new_word_init, initial.vocab.unk_id)])
        if tensor.shape != ours[name].shape:
            raise CheckpointError(f"train.init_from: {name} has shape {tuple(tensor.shape)} with the new "
                                  f"words, the model built from its config {tuple(ours[name].shape)}")
        weights[name] = tensor
    model.load_state_dict(weights)


def new_rows(rows: torch.Tensor, count: int, rule: str, unk_id: int) -> torch.Tensor:
    """(count, ...) rows for new words, from the initial (V, ...) rows by train.new_word_init."""
    regular = rows[len(SPECIAL_TOKENS):].float()  # (V - 4, ...): the learned words, not the specials
    if rule == "mean":
        new = regular.mean(dim=0).expand(count, *rows.shape[1:])  # (count, ...)
    elif rule == "unk":
        new = rows[unk_id].float().expand(count, *rows.shape[1:])  # (count, ...)
    else:  # normal: per column, the mean and spread of the learned words
        noise = torch.randn(count, *rows.shape[1:])  # (count, ...)
        new = regular.mean(dim=0) + regular.std(dim=0) * noise  # (count, ...)
    return new.to(rows.dtype).clone()
