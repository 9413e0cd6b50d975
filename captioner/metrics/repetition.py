"""What a reader notices before any score: captions that show a special token ("standing on a <unk>")
and captions that say a content word twice ("a white and white dog", "a blue shirt and a black shirt").

A content word is any word outside `captioner.vocab.FUNCTION_WORDS`; the same list is what
`Captioner.generate(no_repeat_content_words=True)` allows to repeat, so the decoding control and this
count agree on what a stutter is. Captions are the space-joined words `generate` returns.
"""
from __future__ import annotations

from collections.abc import Sequence

from captioner.vocab import FUNCTION_WORDS, SPECIAL_TOKENS


def shows_special_token(caption: str) -> bool:
    """True when the caption holds <pad>, <start>, <end> or <unk> as a word."""
    return any(word in SPECIAL_TOKENS for word in caption.split())


def repeated_content_words(caption: str) -> list[str]:
    """The content words said more than once, in order of their second mention."""
    seen, repeated = set(), []
    for word in caption.split():
        if word in FUNCTION_WORDS or word in SPECIAL_TOKENS:
            continue
        if word in seen and word not in repeated:
            repeated.append(word)
        seen.add(word)
    return repeated


def caption_quality(captions: Sequence[str]) -> dict[str, float]:
    """Percentages of `captions` that show a special token and that repeat a content word."""
    count = max(len(captions), 1)
    return {"special_token_percent": 100.0 * sum(map(shows_special_token, captions)) / count,
            "repeated_content_word_percent": 100.0 * sum(bool(repeated_content_words(c)) for c in captions) / count}
