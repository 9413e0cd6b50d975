"""ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), as the coco-caption
toolkit computes it for captions: the longest common subsequence (LCS) with each reference, the best
precision and the best recall over the references, then their F-measure weighted towards recall:

    P_s = LCS(c, s) / |c|      R_s = LCS(c, s) / |s|        for each reference s of the image
    P = max_s P_s              R = max_s R_s
    ROUGE-L(c, S) = (1 + β²) P R / (R + β² P)                β = 1.2; 0 when P or R is 0

The corpus score is the mean over images (×100 in our tables). Pure Python: one O(|c|·|s|) table per pair.
"""
from __future__ import annotations

from collections.abc import Sequence

Tokens = Sequence[str]
BETA = 1.2  # recall weighs β² ≈ 1.44 times as much as precision, as in coco-caption


def longest_common_subsequence(first: Tokens, second: Tokens) -> int:
    """Length of the LCS of two word sequences (dynamic programming, one row at a time)."""
    previous = [0] * (len(second) + 1)
    for word in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Tokens, references: Sequence[Tokens]) -> float:
    """ROUGE-L of one caption against its image's references, in [0, 1]."""
    if not references:
        raise ValueError("rouge_l: no reference captions; need >= 1")
    if not candidate:
        return 0.0
    common = [longest_common_subsequence(reference, candidate) for reference in references]
    precision = max(length / len(candidate) for length in common)
    recall = max(length / len(reference) for length, reference in zip(common, references) if reference)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + BETA**2) * precision * recall / (recall + BETA**2 * precision)


def corpus_rouge_l(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Mean ROUGE-L over images, in [0, 1] (papers print it ×100)."""
    if len(candidates) != len(references):
        raise ValueError(f"rouge_l: {len(candidates)} captions but {len(references)} reference lists")
    return sum(map(rouge_l, candidates, references)) / max(len(candidates), 1)
