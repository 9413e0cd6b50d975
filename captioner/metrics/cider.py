"""CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"), as the
coco-caption toolkit computes it, with the document frequencies of a fixed corpus of references.

For each n = 1..4 a caption is a vector g^n of TF-IDF weights over its n-grams ω:

    g^n_ω(s) = count_ω(s) · log(N / max(1, df(ω)))    df: in how many images' references ω occurs, N images
    CIDEr-D_n(c, S) = 1/|S| Σ_{s∈S} e^{-(ℓ_c - ℓ_s)² / 2σ²} · Σ_ω min(g^n_ω(c), g^n_ω(s)) g^n_ω(s) / (‖g^n(c)‖ ‖g^n(s)‖)
    CIDEr-D(c, S) = 10 · 1/4 Σ_n CIDEr-D_n(c, S)                                       σ = 6, ℓ = length

The min clips a caption that repeats an n-gram more often than a reference does; the Gaussian
punishes captions much longer or shorter than a reference ("-D": harder to game). Self-critical
training (self_critical.py) scores thousands of sampled captions against the training references,
so the frequencies are counted once over that corpus (as ruotianluo/self-critical.pytorch does),
where coco-caption recounts them from the references of each call.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]
ORDERS = 4  # n-grams up to 4 words
SIGMA = 6.0  # width of the length penalty, in words


def ngram_counts(words: Tokens) -> list[Counter]:
    """Counts of the 1..4-grams of a caption, one Counter per order."""
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, ORDERS + 1)]


class CiderD:
    """CIDEr-D against `corpus`: one list of reference captions (as words) per image."""

    def __init__(self, corpus: Sequence[Sequence[Tokens]]) -> None:
        if not corpus:
            raise ValueError("CiderD: the reference corpus is empty; need the captions of at least one image")
        self.document_frequency: Counter = Counter()
        for references in corpus:
            self.document_frequency.update({gram for words in references for order in ngram_counts(words)
                                            for gram in order})
        self.log_images = math.log(len(corpus))
        self._cache: dict[tuple[str, ...], tuple[list[dict], list[float]]] = {}  # references are scored again and again

    def vector(self, words: Tokens) -> tuple[list[dict], list[float]]:
        """g^n(words) for n = 1..4 and their norms ‖g^n‖."""
        vectors = [{gram: count * (self.log_images - math.log(max(1.0, self.document_frequency[gram])))
                    for gram, count in order.items()} for order in ngram_counts(words)]
        return vectors, [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]

    def reference_vector(self, words: Tokens) -> tuple[list[dict], list[float]]:
        key = tuple(words)
        if key not in self._cache:
            self._cache[key] = self.vector(words)
        return self._cache[key]

    def score(self, candidate: Tokens, references: Sequence[Tokens]) -> float:
        """CIDEr-D of one caption against its image's references (×10, as coco-caption reports it)."""
        if not references:
            raise ValueError("CiderD.score: no reference captions; need >= 1")
        vectors, norms = self.vector(candidate)
        total = 0.0
        for reference in references:
            reference_vectors, reference_norms = self.reference_vector(reference)
            penalty = math.exp(-((_length(candidate) - _length(reference)) ** 2) / (2 * SIGMA**2))  # e^{-Δℓ²/2σ²}
            for n in range(ORDERS):
                if norms[n] == 0 or reference_norms[n] == 0:
                    continue
                reference_vector = reference_vectors[n]
                overlap = sum(min(weight, reference_vector[gram]) * reference_vector[gram]
                              for gram, weight in vectors[n].items() if gram in reference_vector)
                total += penalty * overlap / (norms[n] * reference_norms[n])  # clipped cosine of the n-gram vectors
        return 10.0 * total / (ORDERS * len(references))

    def corpus_score(self, candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
        """Mean CIDEr-D over images (the number papers report, ×100 in their tables)."""
        if len(candidates) != len(references):
            raise ValueError(f"CiderD: {len(candidates)} captions but {len(references)} reference lists")
        return sum(map(self.score, candidates, references)) / max(len(candidates), 1)


def _length(words: Tokens) -> int:
    """ℓ as coco-caption counts it: the number of bigrams (so 0 and 1 word both count 0)."""
    return max(len(words) - 1, 0)
