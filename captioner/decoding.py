"""Batched beam search and sampling over a decoder's `step` function.

All images and all beams advance together: the state holds B*K rows, one step call per time step,
and no Python loop runs over images or beams. A beam that has emitted <end> is frozen by masking:
its only continuation is <end> again at log-probability 0, so its score stops changing and it keeps
its place among the K best. At the length limit the best finished beam wins; when none finished, the
best unfinished beam is returned (the fallback). beam_size = 1 is greedy decoding.

`Decoding` holds every setting of `Captioner.generate` in one frozen object: a run's eval section
builds it (`EvalConfig.decoding()`), a model carries its own (`model.decoding`), and a caller changes
one field with `dataclasses.replace(model.decoding, beam_size=5)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

State = tuple[torch.Tensor, torch.Tensor]
StepFunction = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


@dataclass(frozen=True)
class Decoding:
    """How `Captioner.generate` turns the decoder's word probabilities into captions.
    The defaults of the first seven fields are `EvalConfig`'s, stored there once."""

    beam_size: int  # beams kept (1 = greedy)
    max_length: int  # longest caption, in words
    no_repeat_ngram_size: int  # beam search never repeats an n-gram within a caption (0 = off)
    no_repeat_content_words: bool  # beam search says a word outside vocab.FUNCTION_WORDS at most once
    content_word_repeat_penalty: float  # else: log-probability a content word's second use costs
    length_penalty: float  # rank finished beams by log p / length**alpha (0 = raw log p)
    allow_unknown_word: bool  # captions may hold <unk> (the raw model); <pad> and <start> never
    temperature: float = 0.0  # > 0: sample from softmax(logits / temperature) instead of beam search
    num_samples: int = 1  # sampling: captions drawn per image, returned as its alternatives
    seed: int | None = None  # sampling: the random seed (None = a fresh draw)


@dataclass
class Generation:
    """The captions found for one image, best first."""

    token_ids: list[list[int]]  # word ids without <start>/<end>, one list per alternative
    log_probs: list[float]  # total log-probability of each alternative
    finished: list[bool]  # whether the alternative ended with <end> within the length limit
    words: list[list[str]] = field(default_factory=list)  # filled in by Captioner.generate


def beam_search(step: StepFunction, state: State, start_id: int, end_id: int, beam_size: int = 1,
                max_length: int = 20, length_penalty: float = 0.0, no_repeat_ngram_size: int = 0,
                repeat_penalty: torch.Tensor | None = None) -> list[Generation]:
    """Decode B images at once. state: (h, c), each (L, B, H) after the image step.

    length_penalty alpha ranks the final beams by log p / length**alpha (0 = raw log-probability).
    no_repeat_ngram_size n > 0 forbids a word that would make an n-gram the beam already holds
    ("a man in a blue shirt and a blue shirt" at n = 3); 0 allows every repeat.
    repeat_penalty (V,) is subtracted from the log-probability of a word the beam already holds; inf on
    the content words means "a white and white dog" and "a blue shirt and a black shirt" cannot be
    produced, a finite value makes them less likely."""
    if beam_size < 1 or max_length < 1 or no_repeat_ngram_size < 0:
        raise ValueError(f"beam_size and max_length must be >= 1 and no_repeat_ngram_size >= 0, "
                         f"got {beam_size}, {max_length} and {no_repeat_ngram_size}")
    B, K = state[0].size(1), beam_size
    device = state[0].device
    tokens = torch.full((B,), start_id, dtype=torch.long, device=device)
    log_probs, state = step(tokens, state)  # (B, V)
    V = log_probs.size(-1)
    K = min(K, V)
    scores, first = log_probs.topk(K, dim=-1)  # (B, K): the first word of each beam
    history = first.unsqueeze(-1)  # (B, K, 1)
    finished = first == end_id  # (B, K)
    state = tuple(s.repeat_interleave(K, dim=1) for s in state)  # (L, B*K, H): row b*K + k
    frozen = torch.full((V,), float("-inf"), device=device)
    frozen[end_id] = 0.0  # a finished beam can only repeat <end>, at no cost
    for _ in range(max_length - 1):
        if bool(finished.all()):
            break
        log_probs, state = step(history[:, :, -1].reshape(-1), state)  # (B*K, V)
        log_probs = apply_repeat_rules(log_probs.view(B, K, V), history, no_repeat_ngram_size, repeat_penalty)
        log_probs = torch.where(finished.unsqueeze(-1), frozen, log_probs)  # (B, K, V)
        candidates = (scores.unsqueeze(-1) + log_probs).view(B, K * V)  # (B, K*V)
        scores, flat = candidates.topk(K, dim=-1)  # (B, K)
        parent, word = flat // V, flat % V  # which beam each survivor extends, and with which word
        history = torch.cat([history.gather(1, parent.unsqueeze(-1).expand_as(history)), word.unsqueeze(-1)], dim=-1)
        finished = finished.gather(1, parent) | (word == end_id)
        rows = (parent + torch.arange(B, device=device).unsqueeze(1) * K).view(-1)  # (B*K,)
        state = tuple(s.index_select(1, rows) for s in state)
    return _collect(history, scores, finished, end_id, length_penalty)


def apply_repeat_rules(log_probs: torch.Tensor, history: torch.Tensor, no_repeat_ngram_size: int,
                       repeat_penalty: torch.Tensor | None) -> torch.Tensor:
    """log_probs (B, K, V) of each beam's next word, less what beam_search's repeat rules forbid or cost."""
    V = log_probs.size(-1)
    if 0 < no_repeat_ngram_size <= history.size(-1):
        log_probs = log_probs.masked_fill(repeated_ngram_words(history, no_repeat_ngram_size, V), float("-inf"))
    if repeat_penalty is not None:
        repeated = used_words(history, V) & (repeat_penalty > 0)  # (B, K, V)
        log_probs = torch.where(repeated, log_probs - repeat_penalty, log_probs)
    return log_probs


def repeated_ngram_words(history: torch.Tensor, n: int, V: int) -> torch.Tensor:
    """history (B, K, T) -> (B, K, V) True for each word w that would repeat an n-gram: some earlier
    n-gram starts with the beam's last n-1 words and ends in w."""
    B, K, T = history.shape
    ngrams = history.unfold(-1, n, 1)  # (B, K, T-n+1, n) every n-gram so far
    context = history[:, :, T - n + 1 :]  # (B, K, n-1) the words the next one continues
    same_start = (ngrams[..., :-1] == context.unsqueeze(2)).all(dim=-1)  # (B, K, T-n+1)
    hits = torch.zeros(B, K, V, device=history.device).scatter_add_(-1, ngrams[..., -1], same_start.float())
    return hits > 0  # (B, K, V)


def used_words(history: torch.Tensor, V: int) -> torch.Tensor:
    """history (B, K, T) -> (B, K, V) True for each word the beam already holds."""
    used = torch.zeros(*history.shape[:2], V, dtype=torch.bool, device=history.device)  # (B, K, V)
    return used.scatter_(-1, history, True)


def sample(step: StepFunction, state: State, start_id: int, end_id: int, max_length: int = 20,
           temperature: float = 1.0, seed: int | None = None, num_samples: int = 1) -> list[Generation]:
    """Draw num_samples captions per image from softmax(logits / temperature): one Generation per
    image, its samples as the alternatives (ranked like beams). The image state is repeated, not
    recomputed, for the samples of one image (rows b*num_samples + k, as in beam search)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    state = tuple(s.repeat_interleave(num_samples, dim=1) for s in state)  # (L, B*K, H)
    B, device = state[0].size(1), state[0].device  # B counts rows: images x samples
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    tokens = torch.full((B,), start_id, dtype=torch.long, device=device)
    scores = torch.zeros(B, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    words = []
    for _ in range(max_length):
        log_probs, state = step(tokens, state)  # (B, V)
        probabilities = torch.softmax(log_probs / temperature, dim=-1)
        tokens = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)  # (B,)
        tokens = torch.where(finished, torch.full_like(tokens, end_id), tokens)
        scores += torch.where(finished, torch.zeros_like(scores), log_probs.gather(1, tokens[:, None]).squeeze(1))
        words.append(tokens)
        finished |= tokens == end_id
        if bool(finished.all()):
            break
    history = torch.stack(words, dim=1).view(B // num_samples, num_samples, -1)  # (images, K, T)
    return _collect(history, scores.view(-1, num_samples), finished.view(-1, num_samples), end_id, 0.0)


def _collect(history: torch.Tensor, scores: torch.Tensor, finished: torch.Tensor, end_id: int,
             length_penalty: float) -> list[Generation]:
    """Strip <end>, rank each image's beams (finished first, then by score), return plain lists."""
    results = []
    for beams, beam_scores, beam_finished in zip(history.tolist(), scores.tolist(), finished.tolist()):
        tokens = [beam[: beam.index(end_id)] if end_id in beam else beam for beam in beams]
        ranked = sorted(range(len(beams)), key=lambda k: (
            not beam_finished[k], -beam_scores[k] / max(len(tokens[k]) + 1, 1) ** length_penalty))
        results.append(Generation([tokens[k] for k in ranked], [beam_scores[k] for k in ranked],
                                  [beam_finished[k] for k in ranked]))
    return results
