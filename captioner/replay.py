"""Replay a finished caption through the decoder's own `start` and `step`, recording what one module
computed at each word: the attention weights α_t (captioner/attention_maps.py) or the StackedLSTM's
gates and cells (captioner/demo/gates.py).

In eval mode the decoder is deterministic, so replaying the chosen words gives exactly the values that
produced them, whichever search chose them (greedy, beam or sampling). The module records on the
calling thread only (captioner/rnn/recorder.py): other requests share the model meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from captioner.model import Captioner
from captioner.modes import evaluating
from captioner.rnn.recorder import recording


@dataclass
class Replay:
    """One caption read back: per word (<end> included), its probability and what the module recorded."""

    words: list[str]  # the word emitted at each step; the specials keep their names ("<end>")
    probabilities: np.ndarray  # (T,) p_t = p(w_t | image, w_<t)
    steps: list[Any]  # what the recorded module recorded while choosing each word (T entries)


@torch.no_grad()
def replay_caption(model: Captioner, pixels: torch.Tensor, token_ids: list[int], recorded: nn.Module,
                   finished: bool = True) -> Replay:
    """Replay `token_ids` (without <start>/<end>) for one preprocessed image (1, 3, S, S) uint8 while
    `recorded` (model.decoder or model.decoder.rnn) records; `finished` adds the <end> step."""
    vocab = model.vocab
    targets = list(token_ids) + ([vocab.end_id] if finished else [])
    inputs = [vocab.start_id] + list(token_ids)  # word t is read to choose word t+1
    probabilities = []
    with evaluating(model), recording(recorded) as steps:
        state = model.decoder.start(model.encoder(pixels))
        steps.clear()  # Show and Tell reads the image as step -1: not a word
        for input_id, target_id in zip(inputs, targets):
            log_probs, state = model.next_word(torch.tensor([input_id], device=pixels.device), state)  # (1, V)
            probabilities.append(float(log_probs[0, target_id].exp()))  # p_t = softmax(W_out h_t)[w_t]
    return Replay([vocab.words[token] for token in targets], np.asarray(probabilities), list(steps))
