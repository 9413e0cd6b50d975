"""Batched beam search gives exactly what a plain per-image beam search gives."""
from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import torch
from test_model import make_model

from captioner.config import EvalConfig
from captioner.decoding import beam_search, repeated_ngram_words, sample, used_words
from captioner.evaluation import evaluate
from captioner.model import Captioner
from captioner.vocab import SPECIAL_TOKENS


def repeats_ngram(tokens: list[int], n: int) -> bool:
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(ngrams) != len(set(ngrams))


def decisive_model():
    """An untrained model predicts near-uniformly by design (loss ln V at init); decoding tests want the
    clear preferences of a trained one, so that no two beams tie within rounding."""
    model = make_model().eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(10)
    return model


def reference_beam_search(model, features: torch.Tensor, beam_size: int, max_length: int, no_repeat: int = 0,
                          penalty: dict[int, float] | None = None):
    """One image, a Python list of beams: the textbook algorithm, kept as the oracle."""
    vocab, decoder = model.vocab, model.decoder
    beams = [([], 0.0, False, decoder.start(features[None]))]
    for _ in range(max_length):
        candidates = []
        for tokens, score, done, state in beams:
            if done:
                candidates.append((tokens, score, True, state))
                continue
            last = torch.tensor([tokens[-1] if tokens else vocab.start_id])
            log_probs, new_state = decoder.step(last, state)
            for word, value in enumerate(log_probs[0].tolist()):
                if no_repeat and repeats_ngram(tokens + [word], no_repeat):
                    continue
                if penalty and word in penalty and word in tokens:
                    if penalty[word] == float("inf"):
                        continue
                    value -= penalty[word]
                candidates.append((tokens + [word], score + value, word == vocab.end_id, new_state))
        beams = sorted(candidates, key=lambda beam: -beam[1])[:beam_size]
        if all(beam[2] for beam in beams):
            break
    finished = [beam for beam in beams if beam[2]] or beams
    best = max(finished, key=lambda beam: beam[1])
    tokens = best[0][:-1] if best[2] else best[0]
    return tokens, best[1]


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_batched_beam_equals_per_image_reference(beam_size):
    model = decisive_model()
    with torch.no_grad():
        features = torch.randn(6, model.encoder.feature_dim)
        batched = beam_search(model.decoder.step, model.decoder.start(features), model.vocab.start_id,
                              model.vocab.end_id, beam_size, max_length=12)
        for index, result in enumerate(batched):
            tokens, score = reference_beam_search(model, features[index], beam_size, 12)
            assert result.token_ids[0] == tokens
            assert result.log_probs[0] == pytest.approx(score, abs=1e-4)


def test_repeated_ngram_words_are_the_continuations_seen_before():
    history = torch.tensor([[[5, 6, 7, 5, 6], [5, 6, 7, 8, 9]]])  # (B=1, K=2, T=5)
    banned = repeated_ngram_words(history, 3, 10)  # (1, 2, 10)
    assert banned[0, 0].nonzero().flatten().tolist() == [7]  # "5 6 7" again
    assert not banned[0, 1].any()  # "8 9" never started a trigram
    assert repeated_ngram_words(history, 1, 10)[0, 1].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("beam_size, n", [(1, 2), (3, 2), (3, 3)])
def test_no_repeat_ngram_beam_equals_the_reference_that_skips_repeats(beam_size, n):
    model = decisive_model()
    with torch.no_grad():
        features = torch.randn(6, model.encoder.feature_dim)
        free, blocked = (beam_search(model.decoder.step, model.decoder.start(features), model.vocab.start_id,
                                     model.vocab.end_id, beam_size, 12, no_repeat_ngram_size=size) for size in (0, n))
        assert any(repeats_ngram(result.token_ids[0], n) for result in free)  # an untrained model repeats itself
        for index, result in enumerate(blocked):
            tokens, score = reference_beam_search(model, features[index], beam_size, 12, no_repeat=n)
            assert result.token_ids[0] == tokens and not repeats_ngram(tokens, n)
            assert result.log_probs[0] == pytest.approx(score, abs=1e-4)


def test_decoding_defaults_are_stored_once_in_eval_config():
    """A new model decodes with EvalConfig's defaults; generate() takes one Decoding, evaluate() few keywords."""
    model = decisive_model()
    assert model.decoding == EvalConfig().decoding()
    assert len(inspect.signature(Captioner.generate).parameters) - 1 <= 4
    assert len(inspect.signature(evaluate).parameters) <= 9
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    free = model.generate(images, replace(model.decoding, beam_size=2, no_repeat_content_words=False))
    assert any(repeats_ngram(g.token_ids[0], 2) for g in free)  # no_repeat_ngram_size's default 0: free
    assert all(not repeats_ngram(g.token_ids[0], 2)
               for g in model.generate(images, replace(model.decoding, beam_size=2, no_repeat_ngram_size=2)))


def test_used_words_marks_every_word_of_the_beam():
    history = torch.tensor([[[5, 6, 5], [7, 7, 7]]])  # (B=1, K=2, T=3)
    used = used_words(history, 10)  # (1, 2, 10)
    assert used[0, 0].nonzero().flatten().tolist() == [5, 6]
    assert used[0, 1].nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("beam_size, penalty", [(1, float("inf")), (3, float("inf")), (3, 1.5)])
def test_repeat_penalty_beam_equals_the_reference_that_charges_a_second_use(beam_size, penalty):
    model = decisive_model()
    penalties = torch.full((len(model.vocab),), penalty)
    penalties[model.vocab.end_id] = 0.0  # every word but <end>: an untrained model surely wants some twice
    marked = {word: penalty for word in range(len(model.vocab)) if word != model.vocab.end_id}
    with torch.no_grad():
        features = torch.randn(6, model.encoder.feature_dim)
        free, charged = (beam_search(model.decoder.step, model.decoder.start(features), model.vocab.start_id,
                                     model.vocab.end_id, beam_size, 12, repeat_penalty=p) for p in (None, penalties))
        assert any(len(set(r.token_ids[0])) < len(r.token_ids[0]) for r in free)
        for index, result in enumerate(charged):
            tokens, score = reference_beam_search(model, features[index], beam_size, 12, penalty=marked)
            assert result.token_ids[0] == tokens
            assert result.log_probs[0] == pytest.approx(score, abs=1e-4)
            if penalty == float("inf"):
                assert len(tokens) == len(set(tokens))


def test_content_words_are_all_but_function_words_and_special_tokens():
    model = make_model()
    marked = {model.vocab.words[i] for i in model.content_words.nonzero().flatten().tolist()}
    assert {"red", "circle", "blue", "square", "triangle"} <= marked
    assert not marked & ({"a", "and", "two", "above"} | set(SPECIAL_TOKENS))


def test_greedy_is_argmax_and_length_limit_falls_back():
    model = decisive_model()
    with torch.no_grad():
        features = torch.randn(3, model.encoder.feature_dim)
        results = beam_search(model.decoder.step, model.decoder.start(features), model.vocab.start_id,
                              model.vocab.end_id, 1, max_length=2)
    for result in results:
        assert len(result.token_ids[0]) <= 2  # an unfinished beam is still returned at the limit


def test_sampling_is_seeded_and_temperature_zero_is_beam():
    model = decisive_model()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    first = model.generate(images, replace(model.decoding, temperature=1.0, seed=3))
    again = model.generate(images, replace(model.decoding, temperature=1.0, seed=3))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    with torch.no_grad():
        state = model.decoder.start(model.encoder(images))
        drawn = sample(model.decoder.step, state, model.vocab.start_id, model.vocab.end_id, 10, 0.5, seed=0)
    assert all(len(g.token_ids[0]) <= 10 for g in drawn)


def test_several_samples_per_image_repeat_the_image_state_and_differ():
    torch.manual_seed(0)
    V, B, K = 7, 3, 4
    table = torch.randn(B, V)  # the image decides the distribution; the state is (h, c) with the image in h

    def step(tokens, state):
        h, c = state
        return torch.log_softmax(table[h[0, :, 0].long()], dim=-1), state

    image_state = (torch.arange(B, dtype=torch.float).view(1, B, 1), torch.zeros(1, B, 1))
    generations = sample(step, image_state, start_id=0, end_id=1, max_length=6, seed=3, num_samples=K)
    assert len(generations) == B and all(len(g.token_ids) == K for g in generations)
    for b, generation in enumerate(generations):
        for tokens, log_p in zip(generation.token_ids, generation.log_probs):  # each scored under its own image
            full = tokens + [1] if len(tokens) < 6 else tokens
            assert log_p == pytest.approx(torch.log_softmax(table[b], -1)[full].sum().item(), abs=1e-5)
    assert len({tuple(t) for g in generations for t in g.token_ids}) > B  # not one caption repeated K times
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sample(step, image_state, 0, 1, num_samples=0)
