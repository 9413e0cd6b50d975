"""Show and Tell (Vinyals et al. 2015): the image is the recurrent network's first input, or its initial state.

The projected image feature is the StackedLSTM's input at step -1, from h_0 = c_0 = 0; then <start>
and the caption's words follow:

    inputs   x_-1 = W_I CNN(I)   x_0 = W_e <start>   x_1 = W_e w_1   ...   x_T-1 = W_e w_T-1
    targets          -            w_1                  w_2          ...   <end>
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.rnn.cells import MEMORY_CELLS, State
from captioner.rnn.packing import Packing
from captioner.rnn.stacked import StackedLSTM


def initial_state(init_h: nn.Linear, init_c: nn.Linear | None, image: torch.Tensor, num_layers: int) -> State:
    """h_0 = tanh(W_h v), c_0 = tanh(W_c v) for every layer, from an image vector v (B, D) -> (layers, B, H) each.
    init_c is None for cells without a memory (rnn, gru): their c is ignored, so it is zeros."""
    B = image.size(0)
    h = torch.tanh(init_h(image)).view(B, num_layers, -1).transpose(0, 1)  # (layers, B, H) h_0 = tanh(W_h v)
    if init_c is None:
        return h.contiguous(), torch.zeros_like(h)
    c = torch.tanh(init_c(image)).view(B, num_layers, -1).transpose(0, 1)  # (layers, B, H) c_0 = tanh(W_c v)
    return h.contiguous(), c.contiguous()


def memory_initialiser(cell: str, width: int, num_layers: int, hidden_size: int) -> nn.Linear | None:
    """W_c of c_0 = tanh(W_c v), for the cells that have a memory c; None for rnn and gru (no unused weights)."""
    return nn.Linear(width, num_layers * hidden_size) if cell in MEMORY_CELLS else None



class Decoder(nn.Module):
    """Word embedding + StackedLSTM + output layer. The image enters as the input before <start>
    (image_as="first_input", Show and Tell) or as the initial state (image_as="initial_state",
    h_0, c_0 = tanh(W f) as Xu et al. 2015 initialise theirs): with a frozen feature as the only view
    of the image, the initial state binds the words to the image in far fewer steps."""

    def __init__(self, *, feature_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, image_as: str = "first_input") -> None:
        super().__init__()
        self.image_as, self.num_layers = image_as, num_layers
        if image_as == "first_input":
            self.image_projection = nn.Linear(feature_dim, embed_size)
        else:
            self.init_h = nn.Linear(feature_dim, num_layers * hidden_size)
            self.init_c = memory_initialiser(cell, feature_dim, num_layers, hidden_size)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = StackedLSTM(embed_size, hidden_size, num_layers, dropout=dropout, cell=cell)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits. features (B, F), tokens (B*repeats, T) starting with <start> -> (B*repeats, T, V);
        token rows b*repeats .. b*repeats+repeats-1 are captions of image b. lengths (B*repeats,): the real
        positions of each row; the StackedLSTM then runs packed (packing.py) and later positions hold 0."""
        words = self.embedding(tokens)  # (B*r, T, E)
        state = None
        if self.image_as == "initial_state":
            state = tuple(part.repeat_interleave(repeats, dim=1) for part in self.start(features))  # (layers, B*r, H)
        else:  # the image is the input of step -1
            image = self.image_projection(features).repeat_interleave(repeats, dim=0).unsqueeze(1)  # (B*r, 1, E)
            words = torch.cat([image, words], dim=1)  # (B*r, T+1, E)
            lengths = None if lengths is None else lengths + 1
        if lengths is None:
            hidden, _ = self.rnn(self.dropout(words), state)  # (B*r, T(+1), H)
            logits = self.output(self.dropout(hidden))  # (B*r, T(+1), V)
        else:
            packing = Packing.from_lengths(lengths, words.size(1))
            hidden, _ = self.rnn(packing.sequence(self.dropout(packing.pack(words))), state)  # (N, H) words only
            logits = packing.unpack(self.output(self.dropout(hidden.data)))  # (B*r, T(+1), V)
        return logits if self.image_as == "initial_state" else logits[:, 1:]  # drop the image step's output

    def start(self, features: torch.Tensor) -> State:
        """The state after reading the image: from h_0 = c_0 = 0, or the image's initial state."""
        if self.image_as == "initial_state":
            return initial_state(self.init_h, self.init_c, self.dropout(features), self.num_layers)
        _, state = self.rnn.step(self.image_projection(features), None)
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word: tokens (B,) -> log-probabilities of the next word (B, V) and the new state."""
        hidden, state = self.rnn.step(self.embedding(tokens), state)  # (B, H)
        return F.log_softmax(self.output(hidden), dim=-1), state
