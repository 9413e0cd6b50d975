"""Config: YAML + dotted overrides, typed, unknown keys and wrong types refused with the key path."""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest

from captioner.config import Config, ConfigError, from_dict, load_config, to_dict
from captioner.decoding import Decoding

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads():
    from captioner.scorer.training import ScorerConfig, is_scorer_config, load_scorer_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        if is_scorer_config(path):  # `task: scorer` configs have their own schema
            assert isinstance(load_scorer_config(path), ScorerConfig), path
        else:
            assert isinstance(load_config(path), Config), path


def test_overrides_are_typed_and_nested():
    config = load_config(REPO / "configs/shapes.yaml", ["train.epochs=3", "model.cell=gru",
                                                         "train.learning_rate=1", "data.synthetic.num_train=10"])
    assert config.train.epochs == 3 and config.model.cell == "gru"
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.data.synthetic.num_train == 10


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 2e-4 as the string "2e-4"; a float field takes it as 0.0002, from the CLI and a file
    path = tmp_path / "rates.yaml"
    path.write_text("train:\n  learning_rate: 4e-4\n")
    config = load_config(path, ["train.self_critical_learning_rate=2E-5"])
    assert config.train.learning_rate == 4e-4 and config.train.self_critical_learning_rate == 2e-5
    with pytest.raises(ConfigError, match="train.learning_rate: expected float"):
        load_config(None, ["train.learning_rate=2e-4x"])
    assert load_config(None, ["run_dir=1e5"]).run_dir == "1e5"  # only float fields convert: a name stays a name


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "train.epoch: unknown key"),
    ("train.epochs=three", "train.epochs: expected int"),
    ("model.dropout=yes", "model.dropout: expected float"),
    ("model=3", "model: expected a section"),
    ("nonsense", "expected key=value"),
    ("data.synthetic.seed.x=1", "data.synthetic.seed: expected int"),
])
def test_bad_override_names_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "marker"
    evil.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not a plain YAML config"):
        load_config(evil)
    assert not marker.exists()
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  optimiser: adam\n")
    with pytest.raises(ConfigError, match="train.optimiser: unknown key"):
        load_config(nested)


def test_dict_round_trip():
    config = load_config(REPO / "configs/shapes.yaml", ["model.num_layers=2"])
    assert from_dict(to_dict(config)) == config


def test_every_difference_of_the_default_run_from_the_dataclass_defaults_is_commented():
    """configs/shapes.yaml (what `python train.py` runs) may differ from the dataclass defaults (the settings
    for photos) only where the field's comment in config.py says so."""
    source = (REPO / "captioner" / "config.py").read_text(encoding="utf-8").splitlines()

    def differences(default: dict, chosen: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in default.items():
            if isinstance(value, dict):
                found += differences(value, chosen[key], f"{prefix}{key}.")
            elif chosen[key] != value:
                found.append(f"{prefix}{key}")
        return found

    changed = differences(to_dict(Config()), to_dict(load_config(REPO / "configs" / "shapes.yaml")))
    assert "model.attention" in changed  # the check has something to check
    for key in changed:
        field_line = next(line for line in source if line.strip().startswith(f"{key.split('.')[-1]}:"))
        assert "shapes.yaml" in field_line, f"{key}: differs in configs/shapes.yaml without a comment saying so"


CHOICES = ["data.format", "data.feature_dtype", "model.cell", "model.image_as", "model.attention_query",
           "model.image_fit", "train.optimizer", "train.lr_schedule", "train.precision",
           "train.self_critical_reward", "train.checkpoint_metric"]


def choices_of(key: str) -> tuple[str, ...]:
    section, name = key.split(".")
    return typing.get_args(typing.get_type_hints(type(getattr(Config(), section)))[name])


@pytest.mark.parametrize("key", CHOICES)
def test_a_bad_choice_is_refused_at_load_naming_the_key_the_value_and_the_choices(key):
    choices = choices_of(key)
    assert len(choices) >= 2 and load_config(None, [f"{key}={choices[-1]}"])  # every choice loads
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"{key}=nonsense"])
    assert str(refused.value) == f"{key}='nonsense': expected one of {', '.join(choices)}"
    with pytest.raises(ConfigError, match=f"{key}"):
        from_dict({key.split(".")[0]: {key.split(".")[1]: "nonsense"}})  # a checkpoint's config alike


def test_each_choice_list_is_the_one_the_code_implements():
    from captioner.decoders.attention import ATTENTION_QUERIES
    from captioner.rnn.cells import CELLS
    from captioner.training.progress import CHECKPOINT_METRICS

    assert choices_of("model.cell") == tuple(CELLS)
    assert choices_of("model.attention_query") == tuple(ATTENTION_QUERIES)
    assert choices_of("train.checkpoint_metric") == tuple(CHECKPOINT_METRICS)


@pytest.mark.parametrize("override, interval", [
    ("train.self_critical_samples=1", "[2, inf)"),  # each sample's baseline is the others' mean
    ("eval.length_penalty=-1.0", "[0, 5]"),
    ("eval.content_word_repeat_penalty=-0.5", "[0, inf]"),
])
def test_every_range_lives_in_ranges(override, interval):
    with pytest.raises(ConfigError, match=re.escape(f"{override}: expected a value in {interval}")):
        load_config(None, [override])
    assert load_config(None, ["eval.content_word_repeat_penalty=.inf"]).eval.content_word_repeat_penalty == math.inf


def test_the_eval_section_builds_the_decoding_with_its_own_values():
    config = load_config(None, ["eval.beam_size=4", "eval.length_penalty=0.7", "eval.val_beam_size=2"])
    decoding = config.eval.decoding()
    assert isinstance(decoding, Decoding) and (decoding.beam_size, decoding.length_penalty) == (4, 0.7)
    assert {field.name for field in dataclasses.fields(Decoding)} - set(to_dict(config)["eval"]) == {
        "temperature", "num_samples", "seed"}  # the rest comes from eval.*, under the same names
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoding.beam_size = 1
