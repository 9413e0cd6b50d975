"""Reranking a beam's alternatives with the image–sentence scorer: a function applied to the output of
`Captioner.generate`, so the captioner never holds a scorer.

    generations = captioner.generate(features=features, decoding=replace(captioner.decoding, beam_size=5))
    generations = rerank_generations(generations, features, load_scorer("runs/scorer/scorer.pt"), weight=1.0)
"""
from __future__ import annotations

import torch
from torch import Tensor

from captioner.decoding import Generation
from captioner.modes import evaluating
from captioner.scorer.model import ImageSentenceScorer


@torch.no_grad()
def rerank_generations(generations: list[Generation], features: Tensor, scorer: ImageSentenceScorer, weight: float,
           length_penalty: float = 0.0) -> list[Generation]:
    """Reorder each image's alternatives by  log p / (n+1)^α + weight · score(image, sentence), finished
    alternatives first as in beam search's own ranking; α is the beam's length penalty (0 = raw log p).
    features (B, F) must come from the encoder the scorer was trained on; each Generation needs `words`."""
    if len(generations) != features.shape[0]:
        raise ValueError(f"rerank: {len(generations)} generations but features for {features.shape[0]} images")
    sentences = [scorer.encode_words(words) for generation in generations for words in generation.words]
    image_of = torch.tensor([b for b, generation in enumerate(generations) for _ in generation.words])
    if len(sentences) != sum(len(generation.token_ids) for generation in generations):
        raise ValueError("rerank: every Generation needs its words (decode them before reranking)")
    with evaluating(scorer):
        scores = scorer.score(features[image_of.to(features.device)], sentences).tolist()
    reranked, offset = [], 0
    for generation in generations:
        count = len(generation.token_ids)
        image_scores = scores[offset:offset + count]
        total = [log_p / (len(tokens) + 1) ** length_penalty + weight * score  # log p / (n+1)^α + w · s
                 for log_p, tokens, score in zip(generation.log_probs, generation.token_ids, image_scores)]
        order = sorted(range(count), key=lambda k: (not generation.finished[k], -total[k]))
        reranked.append(Generation([generation.token_ids[k] for k in order], [generation.log_probs[k] for k in order],
                                   [generation.finished[k] for k in order], [generation.words[k] for k in order]))
        offset += count
    return reranked
