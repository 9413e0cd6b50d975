"""The chapter's "hello" example (examples/hello.py): a character model over [h, e, l, o] learns "ello"
from "hell", with several of the chapter's cells; the printed figure marks the targets."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hello.py"


@pytest.fixture(scope="module")
def hello():
    spec = importlib.util.spec_from_file_location("hello_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_pair_is_hell_to_ello(hello):
    inputs, targets = hello.training_pair()
    assert inputs.shape == (1, 4, 4) and inputs.sum() == 4  # one-hot: one 1 per step
    assert "".join(hello.CHARACTERS[i] for i in inputs[0].argmax(-1).tolist()) == "hell"
    assert "".join(hello.CHARACTERS[i] for i in targets[0].tolist()) == "ello"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_learns_ello_from_hell(hello, cell):
    model, losses = hello.train_hello(cell, seed=0)
    assert abs(losses[0] - math.log(4)) < 0.5, f"{cell}: initial loss {losses[0]:.3f} should be near ln 4"
    assert losses[-1] < 0.05, f"{cell}: final loss {losses[-1]:.4f}"
    assert hello.predict(model) == "ello"
    probabilities = hello.probabilities(model)
    assert torch.allclose(probabilities.sum(-1), torch.ones(4))
    # the two "l" inputs get different answers: the state remembers what came before
    assert probabilities[2, hello.CHARACTERS.index("l")] > 0.9 and probabilities[3, hello.CHARACTERS.index("o")] > 0.9


def test_untrained_model_does_not_already_say_ello(hello):
    torch.manual_seed(0)
    assert hello.predict(hello.CharacterModel(16, "lstm")) != "ello"


def test_figure_marks_each_target_once_per_step(hello):
    probabilities = torch.full((4, 4), 0.25)
    table = hello.format_table(probabilities)
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert rows["input"].split()[1:] == list("hell") and rows["target"].split()[1:] == list("ello")
    assert table.count("*") == 4
    assert rows["p(o)"].count("*") == 1 and rows["p(l)"].count("*") == 2 and rows["p(h)"].count("*") == 0


def test_main_prints_the_figure_and_succeeds(hello, capsys):
    assert hello.main(["--cell", "gru", "--steps", "100"]) == 0
    printed = capsys.readouterr().out
    assert "predicts 'ello' from 'hell'" in printed and printed.count("p(o)") == 2


def test_unknown_character_is_a_clear_error(hello):
    with pytest.raises(ValueError, match=r"characters \['x'\] are not in the vocabulary"):
        hello.encode("hex")
