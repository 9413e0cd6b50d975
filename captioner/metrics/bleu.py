"""Corpus BLEU-1..4 of generated captions: the only BLEU code in the project.

Follows Papineni et al. (2002), "BLEU: a Method for Automatic Evaluation of Machine Translation",
section 2.3, at corpus level, as computed by nltk's `corpus_bleu`:

    p_n    = Σ_images clipped n-gram matches / Σ_images hypothesis n-grams   (modified precision)
    BP     = 1 if c > r else exp(1 - r / c)        c = Σ hypothesis lengths, r = Σ closest reference lengths
    BLEU-N = BP · exp(Σ_{n=1..N} (1/N) · log p_n)  (cumulative: BLEU-4 uses p_1..p_4)

Every reference caption of an image counts (clipping takes the most matches in any one reference;
the closest reference length breaks ties towards the shorter). Scores are ×100, in [0, 100].

Edge cases, all with a defined score and no warning:
- zero overlap: if no n-gram of order n matches anywhere in the corpus, p_n = 0 and every BLEU-N with
  N >= n is exactly 0.0. No smoothing is applied (corpus-level BLEU is the captioning convention).
  nltk would instead warn and return a tiny positive number (~1e-77); we suppress its UserWarning and
  return 0.0.
- hypotheses shorter than 4 tokens: a hypothesis with fewer than n tokens has no n-grams; nltk still
  counts one (unmatched) n-gram slot for it in the denominator of p_n. A corpus of only 2-token
  hypotheses thus scores 0.0 on BLEU-3 and BLEU-4.
- an empty hypothesis: adds one unmatched slot to every p_n, adds 0 to c and its shortest reference's
  length to r, so it lowers every score; a corpus of only empty hypotheses scores 0.0.
- an empty corpus (no hypotheses) scores 0.0.
Bad input raises ValueError: unequal numbers of hypotheses and reference lists, an image with no
reference, or a caption passed as a string instead of a list of tokens (nltk would silently score
its characters).
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

# Cumulative n-gram weights: BLEU-N is the geometric mean of p_1..p_N with equal weights.
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu1": (1.0,),
    "bleu2": (0.5, 0.5),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}

Tokens = Sequence[str]  # one caption as words, e.g. from `captioner.vocab.tokenize`


def bleu_scores(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (×100) of `hypotheses[i]` against all captions in `references[i]`.

    Returns {"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}; edge cases in the module docstring.
    """
    _check_inputs(hypotheses, references)
    if len(hypotheses) == 0:
        return {name: 0.0 for name in BLEU_WEIGHTS}  # nltk divides 0 by 0 here
    zero_match_orders: set[int] = set()  # n-gram orders n with no match in the whole corpus

    def no_smoothing(precisions: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """nltk's method0 without its warning: remember which p_n are 0 (their scores are set to 0.0 below)."""
        for order, precision in enumerate(precisions, start=1):
            if precision.numerator == 0:
                zero_match_orders.add(order)
        # log(0) is undefined; any positive stand-in works because those scores are replaced by 0.0.
        return [precision if precision.numerator else sys.float_info.min for precision in precisions]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nltk's "0 counts of n-gram overlaps" and kin
        raw_scores = corpus_bleu(
            [list(map(list, image_references)) for image_references in references],
            [list(hypothesis) for hypothesis in hypotheses],
            weights=list(BLEU_WEIGHTS.values()),
            smoothing_function=no_smoothing,
        )
    scores = {}
    for (name, weights), raw_score in zip(BLEU_WEIGHTS.items(), raw_scores):
        has_zero_precision = any(order <= len(weights) for order in zero_match_orders)
        scores[name] = 0.0 if has_zero_precision else 100.0 * float(raw_score)
    return scores


def reference_bleu(references: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (x100) of each image's first reference against its other ones.

    Measures how much the references vary: identical references would score 100."""
    if not references:
        raise ValueError("reference_bleu: no images")
    return bleu_scores([tokens[0] for tokens in references], [tokens[1:] for tokens in references])


def sentence_bleu4(hypothesis: Tokens, references: Sequence[Tokens]) -> float:
    """BLEU-4 of one caption in [0, 1], the reward of self-critical training (self_critical.py).

    One caption rarely matches a 4-gram, and unsmoothed BLEU-4 would then be 0 for good and bad captions
    alike: a zero count is replaced by 0.1 (Chen & Cherry 2014, smoothing 1), so each match still counts."""
    if not hypothesis:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(sentence_bleu([list(r) for r in references], list(hypothesis), smoothing_function=_SMOOTHING))


_SMOOTHING = SmoothingFunction(epsilon=0.1).method1


def _check_inputs(hypotheses: Sequence[Any], references: Sequence[Any]) -> None:
    """One reference list per hypothesis, at least one reference each, every caption a list of words."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"bleu_scores: {len(hypotheses)} hypotheses but {len(references)} reference lists; "
            "expected one list of reference captions per hypothesis"
        )
    for index, (hypothesis, image_references) in enumerate(zip(hypotheses, references)):
        _check_tokens(hypothesis, f"hypotheses[{index}]")
        if len(image_references) == 0:
            raise ValueError(f"bleu_scores: references[{index}]: image {index} has no reference captions; need >= 1")
        for reference_index, reference in enumerate(image_references):
            _check_tokens(reference, f"references[{index}][{reference_index}]")


def _check_tokens(caption: Any, where: str) -> None:
    if not isinstance(caption, (list, tuple)) or not all(isinstance(token, str) for token in caption):
        raise ValueError(f"bleu_scores: {where}: expected a list of word strings, got {caption!r:.60}")
