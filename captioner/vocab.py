"""Tokenizer and word vocabulary: caption text <-> the integer ids the decoder reads and writes.

`tokenize` is the one place where caption text becomes words, for training targets, for BLEU
references and for the demo, so the three can never disagree. It needs no downloaded data (nltk's
`word_tokenize` would need "punkt"). The rules, chosen to keep the vocabulary small and readable:

- lowercase (`str.lower`); the curly apostrophes ’ and ʼ count as a plain ';
- a word is a run of Unicode letters or digits: "café", "3pm", "2";
- an apostrophe *between* two such runs stays inside the word ("man's", "it's", "don't"), so
  "it's" and "its" remain different words; a leading or trailing one is dropped ("dogs'" -> "dogs");
- everything else is a separator and is dropped: punctuation, hyphens ("black-and-white" -> three
  words), underscores, "<" and ">" (so caption text can never produce a special token like "<unk>").

`Vocabulary` maps words to ids. Ids 0-3 are fixed special tokens (PAD, START, END, UNK); the
regular words follow, most frequent first. It round-trips through a plain JSON dict
(`{"format_version": 1, "words": [...]}`, where `words[i]` is the word with id i) so a checkpoint
can carry it without pickling a class.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from captioner.files import write_atomically

PAD = "<pad>"  # id 0: fills batches of captions to one length; ignored by the loss
START = "<start>"  # id 1: the first decoder input; never emitted as a word
END = "<end>"  # id 2: the decoder emits it to finish a caption
UNK = "<unk>"  # id 3: any word that is not in the vocabulary
SPECIAL_TOKENS = (PAD, START, END, UNK)
FORMAT_VERSION = 1  # version of the `to_dict` layout; bump when it changes

# Words a caption may repeat: the grammar between its content ("a dog and a cat in the snow").
# Any other word said twice is a stutter ("a white and white dog"); decoding can forbid it
# (eval.no_repeat_content_words) and captioner.metrics.repetition counts it.
FUNCTION_WORDS = frozenset(
    "a an the and or but nor so as than then while when where who whom whose which what that this these those "
    "there here is are was were be been being am has have had having does do did doing will would can could "
    "it its it's he him his she her hers they them their theirs we us our you your i me my one ones "
    "two three four five six seven eight nine ten some any all both each every several many few more most other "
    "another such no not very too also just "
    "of in on at to from by for with without into onto through over under above below near behind beside "
    "between across along around about against down up off out upon toward towards past after before "
    "during inside outside underneath beneath next front top".split())

# [^\W_] is "a Unicode letter or digit": \w without the underscore.
_WORD_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})


class VocabularyError(ValueError):
    """A vocabulary dict or file is malformed; the message names the field and what was expected."""


def tokenize(text: str) -> list[str]:
    """Lowercased words of `text`, punctuation dropped (rules in the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize: expected a caption string, got {type(text).__name__}")
    return _WORD_PATTERN.findall(text.lower().translate(_APOSTROPHES))


class Vocabulary:
    """Word <-> id table with the special tokens PAD=0, START=1, END=2, UNK=3."""

    def __init__(self, words: Iterable[str]) -> None:
        """`words` are the regular words in id order (ids 4, 5, ...); the specials are added here."""
        self._words: tuple[str, ...] = SPECIAL_TOKENS + tuple(words)
        self._ids: dict[str, int] = {word: index for index, word in enumerate(self._words)}
        if len(self._ids) != len(self._words):
            duplicates = sorted(word for word, count in Counter(self._words).items() if count > 1)
            raise VocabularyError(f"vocabulary words must be unique; repeated: {duplicates[:5]}")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int) -> Vocabulary:
        """Keep every word seen at least `min_count` times, sorted by (-count, word) for determinism."""
        if type(min_count) is not int or min_count < 1:
            raise ValueError(f"min_count: expected an integer >= 1, got {min_count!r}")
        counts = Counter(word for caption in captions for word in tokenize(caption))
        kept = [word for word, count in counts.items() if count >= min_count]
        kept.sort(key=lambda word: (-counts[word], word))
        return cls(kept)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._words == other._words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words incl. {len(SPECIAL_TOKENS)} special)"

    @property
    def words(self) -> tuple[str, ...]:
        """All words in id order, specials first: `words[i]` has id i."""
        return self._words

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def start_id(self) -> int:
        return self._ids[START]

    @property
    def end_id(self) -> int:
        return self._ids[END]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    def word_id(self, word: str) -> int:
        """Id of one (already tokenized) word; UNK for a word not in the vocabulary."""
        return self._ids.get(word, self.unk_id)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """[START, word ids..., END]; the words are cut to `max_length` before END is appended."""
        if max_length is not None and (type(max_length) is not int or max_length < 0):
            raise ValueError(f"max_length: expected None or an integer >= 0, got {max_length!r}")
        words = tokenize(text)[:max_length]  # [:None] keeps them all
        return [self.start_id, *(self.word_id(word) for word in words), self.end_id]

    def decode_tokens(self, ids: Iterable[Any]) -> list[str]:
        """Words of a generated id sequence: stops at the first END, skips PAD and START, keeps UNK."""
        tokens = []
        for position, raw_id in enumerate(ids):
            token_id = int(raw_id)  # accepts ints, numpy ints and 0-d tensors
            if not 0 <= token_id < len(self._words):
                where = f"decode: id {token_id} at position {position}"
                raise ValueError(f"{where} is not in this {len(self)}-word vocabulary (ids 0..{len(self) - 1})")
            if token_id == self.end_id:
                break
            if token_id in (self.pad_id, self.start_id):
                continue
            tokens.append(self._words[token_id])
        return tokens

    def decode(self, ids: Iterable[Any]) -> str:
        """The caption text of a generated id sequence: `decode_tokens` joined with spaces."""
        return " ".join(self.decode_tokens(ids))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (also safe for `torch.load(weights_only=True)`)."""
        return {"format_version": FORMAT_VERSION, "words": list(self._words)}

    @classmethod
    def from_dict(cls, values: Any, source: str = "vocabulary") -> Vocabulary:
        """Rebuild from `to_dict` output; `source` (e.g. a file name) prefixes every error message."""
        if not isinstance(values, dict):
            expected = "a dict with 'format_version' and 'words'"
            raise VocabularyError(f"{source}: expected {expected}, got {type(values).__name__}")
        unknown = sorted(set(values) - {"format_version", "words"}, key=str)
        if unknown:
            raise VocabularyError(f"{source}: unknown key {unknown[0]!r} (expected 'format_version' and 'words')")
        version = values.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:  # type check refuses True and 1.0
            raise VocabularyError(f"{source}: format_version: expected {FORMAT_VERSION}, got {version!r}")
        if "words" not in values:
            raise VocabularyError(f"{source}: missing key 'words' (the list of words in id order)")
        words = values["words"]
        if not isinstance(words, (list, tuple)):
            raise VocabularyError(f"{source}: words: expected a list of strings, got {type(words).__name__}")
        _check_words(words, source)
        return cls(words[len(SPECIAL_TOKENS):])

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON; written to a temporary file first so a crash leaves no half file."""
        write_atomically(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a file written by `save`."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise VocabularyError(f"{path}: not a JSON vocabulary file ({error})") from None
        return cls.from_dict(values, source=str(path))


def _check_words(words: Sequence[Any], source: str) -> None:
    """The special tokens first, in order; then unique, non-empty, space-free strings."""
    if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        head = list(words[: len(SPECIAL_TOKENS)])
        raise VocabularyError(f"{source}: words: expected to start with {list(SPECIAL_TOKENS)}, got {head}")
    seen: set[str] = set()
    for index, word in enumerate(words):
        if not isinstance(word, str) or word.split() != [word]:  # also refuses "" and any whitespace
            raise VocabularyError(f"{source}: words[{index}]: expected a non-empty string without spaces, got {word!r}")
        if word in seen:
            raise VocabularyError(f"{source}: words[{index}]: {word!r} appears twice; each word needs one id")
        seen.add(word)
