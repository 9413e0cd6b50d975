"""Tests for captioner/metrics/bleu.py: hand-computed BLEU, the edge cases, and pycocoevalcap as the oracle."""
from __future__ import annotations

import math
import random
import warnings

import pytest

from captioner.metrics.bleu import bleu_scores

ORACLE_WORDS = (
    "a an the dog cat man woman boy girl ball red blue green big small runs sits on in with near "
    "grass street park water holding jumping white black two three"
).split()


def test_identical_hypothesis_and_reference_score_100():
    caption = "a dog runs on the green grass".split()
    scores = bleu_scores([caption, caption[:4]], [[caption, ["x"]], [caption[:4]]])
    assert scores == pytest.approx({"bleu1": 100.0, "bleu2": 100.0, "bleu3": 100.0, "bleu4": 100.0})
    assert all(type(value) is float for value in scores.values())


def test_hand_computed_scores_with_brevity_penalty():
    hypothesis = "the cat sat on mat".split()  # 5 words against a 6-word reference
    reference = "the cat sat on the mat".split()
    brevity = math.exp(1 - 6 / 5)  # BP = exp(1 - r/c)
    p1, p2, p3, p4 = 5 / 5, 3 / 4, 2 / 3, 1 / 2  # matched n-grams / hypothesis n-grams
    expected = {
        "bleu1": 100 * brevity * p1,
        "bleu2": 100 * brevity * (p1 * p2) ** (1 / 2),
        "bleu3": 100 * brevity * (p1 * p2 * p3) ** (1 / 3),
        "bleu4": 100 * brevity * (p1 * p2 * p3 * p4) ** (1 / 4),
    }
    assert bleu_scores([hypothesis], [[reference]]) == pytest.approx(expected, abs=1e-9)


def test_counts_are_clipped_and_the_best_reference_counts():
    scores = bleu_scores([["the", "the", "the", "the"]], [[["the", "cat"], ["the", "the", "dog"]]])
    assert scores["bleu1"] == pytest.approx(50.0)  # at most 2 "the" match (second reference)
    assert scores["bleu2"] == pytest.approx(100 * (0.5 * 1 / 3) ** 0.5)  # one "the the" of three


def test_zero_overlap_is_exactly_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nltk's UserWarning would fail the test
        scores = bleu_scores([["red", "ball"], ["blue", "sky", "today"]], [[["a", "dog"]], [["two", "cats"]]])
    assert scores == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}


def test_no_match_of_higher_order_gives_exact_zero_for_those_scores():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = bleu_scores([["dog", "a", "runs"]], [[["a", "dog", "runs"]]])  # words match, no bigram does
    assert scores["bleu1"] == pytest.approx(100.0)
    assert scores["bleu2"] == scores["bleu3"] == scores["bleu4"] == 0.0  # not nltk's ~1e-77


def test_hypotheses_shorter_than_four_tokens():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = bleu_scores([["a", "cat"]], [[["a", "cat"]]])
    assert scores == {"bleu1": 100.0, "bleu2": 100.0, "bleu3": 0.0, "bleu4": 0.0}


def test_empty_hypothesis_counts_as_one_unmatched_slot():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bleu_scores([[]], [[["a", "cat"]]]) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}
        scores = bleu_scores([["a", "b", "c", "d"], []], [[["a", "b", "c", "d"]], [["x", "y"]]])
    # p_1 = 4 / (4 + 1), c = 4, r = 4 + 2 (the empty hypothesis's closest reference has 2 words)
    assert scores["bleu1"] == pytest.approx(100 * 0.8 * math.exp(1 - 6 / 4))


def test_empty_corpus_scores_zero():
    assert bleu_scores([], []) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0}


def test_mismatched_counts_name_both_counts():
    with pytest.raises(ValueError, match=r"3 hypotheses but 2 reference lists"):
        bleu_scores([["a"], ["b"], ["c"]], [[["a"]], [["b"]]])


def test_image_without_references_is_named():
    with pytest.raises(ValueError, match=r"references\[1\].*no reference captions"):
        bleu_scores([["a"], ["b"]], [[["a"]], []])


def test_strings_instead_of_token_lists_are_refused():
    with pytest.raises(ValueError, match=r"hypotheses\[0\].*list of word strings"):
        bleu_scores(["a dog"], [[["a", "dog"]]])
    with pytest.raises(ValueError, match=r"references\[0\]\[0\].*list of word strings"):
        bleu_scores([["a", "dog"]], [["a", "dog"]])  # one nesting level missing


def _perturb(rng: random.Random, base: list[str], substitution_rate: float) -> list[str]:
    """A paraphrase stand-in: drop ~10% of the words, replace others at `substitution_rate`."""
    kept = [word for word in base if rng.random() > 0.1]
    return [rng.choice(ORACLE_WORDS) if rng.random() < substitution_rate else word for word in kept]


def _oracle_corpus(seed: int, shorten: bool) -> tuple[list[list[str]], list[list[list[str]]]]:
    """50 images x 5 references that share most words with a hidden base caption, and one hypothesis each."""
    rng = random.Random(seed)
    hypotheses, references = [], []
    for _ in range(50):
        base = [rng.choice(ORACLE_WORDS) for _ in range(rng.randint(8, 12))]
        references.append([_perturb(rng, base, 0.25) for _ in range(5)])
        hypothesis = _perturb(rng, base, 0.3)
        if shorten:  # makes c < r, so the brevity penalty is exercised
            hypothesis = hypothesis[: max(4, len(hypothesis) * 2 // 3)]
        hypotheses.append(hypothesis)
    # nltk and pycocoevalcap differ (by design) only for hypotheses shorter than 4 words; keep clear of that.
    assert min(len(hypothesis) for hypothesis in hypotheses) >= 4
    return hypotheses, references


@pytest.mark.parametrize("shorten", [False, True], ids=["full_length", "brevity_penalty"])
def test_agrees_with_pycocoevalcap(shorten):
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    hypotheses, references = _oracle_corpus(seed=0, shorten=shorten)
    ours = bleu_scores(hypotheses, references)
    gts = {index: [" ".join(caption) for caption in captions] for index, captions in enumerate(references)}
    res = {index: [" ".join(hypothesis)] for index, hypothesis in enumerate(hypotheses)}
    coco_scores, _ = bleu_module.Bleu(4).compute_score(gts, res)
    for order, coco_score in enumerate(coco_scores, start=1):
        assert ours[f"bleu{order}"] == pytest.approx(100 * coco_score, abs=0.5), f"BLEU-{order}"
    assert ours["bleu4"] > 10  # a realistic, non-degenerate corpus: all four orders really compared
