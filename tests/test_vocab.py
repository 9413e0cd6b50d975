"""Tests for captioner/vocab.py: tokenizer rules, vocabulary building, encode/decode and the JSON round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from captioner.vocab import END, PAD, SPECIAL_TOKENS, START, UNK, Vocabulary, VocabularyError, tokenize

CAPTIONS = ["A dog runs.", "A dog sits!", "The cat sits", "a bird"]  # a:3 dog:2 sits:2 runs/the/cat/bird:1


@pytest.mark.parametrize(
    "text, words",
    [
        ("A man's dog, running!", ["a", "man's", "dog", "running"]),
        ("It\u2019s 3pm", ["it's", "3pm"]),  # curly apostrophe normalised, digits kept
        ("dogs' toys, 'quoted'", ["dogs", "toys", "quoted"]),  # outer apostrophes dropped
        ("black-and-white photo", ["black", "and", "white", "photo"]),
        ("Two  dogs\tplay.\n", ["two", "dogs", "play"]),
        ("Caf\u00e9 NA\u00cfVE", ["caf\u00e9", "na\u00efve"]),  # Unicode letters, lowercased
        ("<unk> snake_case", ["unk", "snake", "case"]),  # no text can become a special token
        ("", []),
        ("?! ... --", []),
    ],
)
def test_tokenize_examples(text, words):
    assert tokenize(text) == words


def test_tokenize_refuses_non_strings():
    with pytest.raises(TypeError, match="caption string"):
        tokenize(None)


def test_special_ids_are_fixed():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.words[:4] == (PAD, START, END, UNK) == SPECIAL_TOKENS
    assert len(Vocabulary([])) == 4


def test_build_keeps_words_at_the_threshold_sorted_by_count_then_word():
    assert Vocabulary.build(CAPTIONS, min_count=2).words[4:] == ("a", "dog", "sits")
    assert Vocabulary.build(CAPTIONS, min_count=3).words[4:] == ("a",)
    assert Vocabulary.build(CAPTIONS, min_count=4).words[4:] == ()
    everything = Vocabulary.build(CAPTIONS, min_count=1)
    assert everything.words[4:] == ("a", "dog", "sits", "bird", "cat", "runs", "the")
    assert len(everything) == 11


def test_build_is_independent_of_caption_order():
    assert Vocabulary.build(CAPTIONS, 1) == Vocabulary.build(list(reversed(CAPTIONS)), 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_build_refuses_bad_min_count(bad):
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(CAPTIONS, min_count=bad)


def test_encode_decode_round_trip_with_unknown_words():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    ids = vocab.encode("A zebra sits, a dog runs.")
    a, dog, sits = (vocab.word_id(word) for word in ("a", "dog", "sits"))
    assert ids == [1, a, 3, sits, a, dog, 3, 2]
    assert vocab.decode(ids) == "a <unk> sits a dog <unk>"
    assert vocab.decode_tokens(ids) == ["a", "<unk>", "sits", "a", "dog", "<unk>"]
    assert vocab.encode("") == [1, 2]


def test_encode_cuts_words_before_end():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    assert vocab.encode("a dog sits", max_length=2) == [1, vocab.word_id("a"), vocab.word_id("dog"), 2]
    assert vocab.encode("a dog sits", max_length=0) == [1, 2]
    assert len(vocab.encode("a dog sits", max_length=10)) == 5
    with pytest.raises(ValueError, match="max_length"):
        vocab.encode("a dog", max_length=-1)


def test_decode_stops_at_end_and_skips_pad_and_start():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    a, dog = vocab.word_id("a"), vocab.word_id("dog")
    assert vocab.decode([1, a, 0, dog, 2, a, a]) == "a dog"
    assert vocab.decode(np.array([a, dog, 0, 0])) == "a dog"  # numpy ints; no END at all
    assert vocab.decode([2, a]) == ""


def test_decode_refuses_ids_outside_the_vocabulary():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    with pytest.raises(ValueError, match=r"id 11 at position 1 .* 11-word"):
        vocab.decode([1, 11])
    with pytest.raises(ValueError, match=r"id -1"):
        vocab.decode([-1])


def test_dict_round_trip_is_plain_json():
    vocab = Vocabulary.build(CAPTIONS + ["caf\u00e9 it's"], min_count=1)
    values = vocab.to_dict()
    assert values["format_version"] == 1 and values["words"][:4] == list(SPECIAL_TOKENS)
    restored = Vocabulary.from_dict(json.loads(json.dumps(values)))
    assert restored == vocab and restored.words == vocab.words
    assert restored != Vocabulary.build(CAPTIONS, min_count=2)


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS + ["caf\u00e9 it's"], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocabulary.load(path) == vocab
    assert json.loads(path.read_text(encoding="utf-8"))["words"] == list(vocab.words)
    assert [child.name for child in tmp_path.iterdir()] == ["vocab.json"]  # no temporary file left


def test_load_names_the_file_on_bad_content(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("{not json")
    with pytest.raises(VocabularyError, match=r"vocab\.json: not a JSON vocabulary file"):
        Vocabulary.load(path)
    path.write_text(json.dumps({"format_version": 1, "words": ["<pad>"]}))
    with pytest.raises(VocabularyError, match=r"vocab\.json: words: expected to start with"):
        Vocabulary.load(path)


GOOD_WORDS = [PAD, START, END, UNK, "a", "dog"]


@pytest.mark.parametrize(
    "values, message",
    [
        (["a", "dog"], "expected a dict"),
        ({"words": GOOD_WORDS}, "format_version: expected 1, got None"),
        ({"format_version": 2, "words": GOOD_WORDS}, "format_version: expected 1, got 2"),
        ({"format_version": True, "words": GOOD_WORDS}, "format_version: expected 1, got True"),
        ({"format_version": 1}, "missing key 'words'"),
        ({"format_version": 1, "words": GOOD_WORDS, "extra": 0}, "unknown key 'extra'"),
        ({"format_version": 1, "words": "a dog"}, "words: expected a list of strings, got str"),
        ({"format_version": 1, "words": ["a", "dog"]}, "expected to start with"),
        ({"format_version": 1, "words": [START, PAD, END, UNK]}, "expected to start with"),
        ({"format_version": 1, "words": GOOD_WORDS + [7]}, r"words\[6\]: expected a non-empty string"),
        ({"format_version": 1, "words": GOOD_WORDS + [""]}, r"words\[6\]: expected a non-empty string"),
        ({"format_version": 1, "words": GOOD_WORDS + ["two words"]}, r"words\[6\]: .*without spaces"),
        ({"format_version": 1, "words": GOOD_WORDS + ["dog"]}, r"words\[6\]: 'dog' appears twice"),
        ({"format_version": 1, "words": GOOD_WORDS + [UNK]}, r"words\[6\]: '<unk>' appears twice"),
    ],
)
def test_from_dict_refuses_malformed_input(values, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary.from_dict(values)


def test_constructor_refuses_duplicate_words():
    with pytest.raises(VocabularyError, match="unique"):
        Vocabulary(["dog", "dog"])
