"""Retrieval R@K for an image–sentence similarity matrix, each with its random-chance value."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def recall_at_k(similarity: Tensor, sentence_image: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval R@K (%) from S (N_images, N_sentences); sentence_image[l] is the image of sentence l.

    image→text: an image counts if any of its own sentences is among its K best; text→image: a sentence
    counts if its image is among its K best. Ranks count strictly better scores (ties favour the match).
    Each R@K comes with its random-chance value (`..._chance`): the expected R@K of a random ranking."""
    N, M = similarity.shape
    if sentence_image.shape != (M,) or int(sentence_image.min()) < 0 or int(sentence_image.max()) >= N:
        raise ValueError(f"recall_at_k: sentence_image must be ({M},) image indices in [0, {N}), "
                         f"got shape {tuple(sentence_image.shape)}")
    own = sentence_image[None, :] == torch.arange(N, device=similarity.device)[:, None]  # (N, M)
    best_own = similarity.masked_fill(~own, float("-inf")).max(dim=1).values  # (N,)
    image_rank = (similarity > best_own[:, None]).sum(dim=1)  # (N,) sentences strictly better than the best own
    pair_score = similarity[sentence_image, torch.arange(M, device=similarity.device)]  # (M,)
    sentence_rank = (similarity > pair_score[None, :]).sum(dim=0)  # (M,) images strictly better than its own
    own_counts = own.sum(dim=1).tolist()
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * (image_rank < k).float().mean().item()
        metrics[f"i2t_r{k}_chance"] = 100.0 * sum(_chance_any_in_top(M, m, k) for m in own_counts) / N
        metrics[f"t2i_r{k}"] = 100.0 * (sentence_rank < k).float().mean().item()
        metrics[f"t2i_r{k}_chance"] = 100.0 * min(k, N) / N
    return metrics


def _chance_any_in_top(total: int, good: int, k: int) -> float:
    """P(one of `good` items is in the top k of a random order of `total`) = 1 − C(total−good, k) / C(total, k)."""
    return 1.0 - math.comb(total - good, k) / math.comb(total, k) if k <= total else float(good > 0)
