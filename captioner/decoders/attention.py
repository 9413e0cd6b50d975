"""Soft attention decoders: the caption looks at image regions, around the same explicit StackedLSTM.

Both decoders see the image as L region vectors (the encoder's h x w map, one row per cell). A
weighted sum Σ_i α_i a_i forgets which cell each vector came from, yet captions say "to the left of":
so each projected region also gets a learned embedding of its place in the grid (`RegionProjection`),
as in DETR/ViT, and the context vector carries where the attended object is.

Inside `captioner.rnn.recorder.recording(decoder)` each step records, on the calling thread only, its
weights α_t, detached, (B, L) rows summing to 1 over the L regions (a teacher-forced `forward` of the
current-state decoder records one (B*T, L) entry): the attention maps read them, as the gate view reads
StackedLSTM's gates through the same recorder, so no decoder math is repeated elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from captioner.decoders.show_and_tell import initial_state, memory_initialiser
from captioner.rnn.packing import Packing
from captioner.rnn.recorder import record
from captioner.rnn.stacked import StackedLSTM


class RegionProjection(nn.Module):
    """a_i = W a_i + p_i: each region projected to `width`, plus a learned vector p_i for grid cell i
    (num_regions = 0: no position, the plain projection of Xu et al.)."""

    def __init__(self, region_dim: int, width: int, num_regions: int) -> None:
        super().__init__()
        self.linear = nn.Linear(region_dim, width)
        self.position = nn.Parameter(torch.randn(num_regions, width) * 0.02) if num_regions else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        regions = self.linear(features)  # (B, L, D) -> (B, L, W)
        if self.position is None:
            return regions
        if features.size(1) != self.position.size(0):
            raise ValueError(f"attention: the encoder gave {features.size(1)} regions, the decoder was built "
                             f"for {self.position.size(0)} (another image size?)")
        return regions + self.position  # (B, L, W) a_i + p_i: what is there, and where


class AttentionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al. 2015), deterministic soft attention, around the same StackedLSTM.

    The image is L region vectors a_i (the encoder's h x w map, projected to E). Before every word the
    decoder looks at them through its previous top-layer state (section 3.1.2, eqs. 4-6, 13):

        h_0, c_0 = tanh(W_init,h ā), tanh(W_init,c ā)       ā = mean_i a_i
        e_ti = w^T tanh(W_a a_i + W_h h_{t-1})               relevance of region i
        α_t  = softmax_i(e_t)                                where to look
        z_t  = σ(W_β h_{t-1}) ⊙ Σ_i α_ti a_i                 gated context vector
        h_t  = StackedLSTM([E y_{t-1}; z_t], h_{t-1})        p(y_t) = softmax(W_o h_t)

    The state carries the regions and their keys W_a a_i, batch on dim 1 like (h, c), so beam search
    reorders and repeats them like any other state tensor.
    """

    def __init__(self, *, region_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, attention_size: int = 0, num_regions: int = 0) -> None:
        super().__init__()
        A = attention_size or embed_size
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.region_projection = RegionProjection(region_dim, embed_size, num_regions)
        self.init_h = nn.Linear(embed_size, num_layers * hidden_size)
        self.init_c = memory_initialiser(cell, embed_size, num_layers, hidden_size)
        self.region_keys = nn.Linear(embed_size, A)  # W_a
        self.state_query = nn.Linear(hidden_size, A)  # W_h
        self.score = nn.Linear(A, 1, bias=False)  # w (a bias would cancel in the softmax over regions)
        self.context_gate = nn.Linear(hidden_size, embed_size)  # W_β
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = StackedLSTM(2 * embed_size, hidden_size, num_layers, dropout=dropout, cell=cell)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """features (B, L, D) -> state (h, c, regions (L, B, E), keys (L, B, E)); h and c (layers, B, H)."""
        regions = self.region_projection(features)  # (B, L, E)
        h, c = initial_state(self.init_h, self.init_c, regions.mean(dim=1), self.num_layers)  # from ā = mean_i a_i
        keys = self.region_keys(regions)  # (B, L, E) W_a a_i, computed once per image
        return h, c, regions.transpose(0, 1), keys.transpose(0, 1)

    def advance(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple]:
        """One word: tokens (B,) -> logits (B, V) and the new state."""
        h, c, regions, keys = state
        query = self.state_query(h[-1])  # (B, E) W_h h_{t-1}
        e = self.score(torch.tanh(keys + query)).squeeze(-1)  # (L, B) e_ti = w^T tanh(W_a a_i + W_h h_{t-1})
        alpha = torch.softmax(e, dim=0)  # (L, B) α_t = softmax_i(e_t)
        record(self, alpha.t())  # (B, L)
        z = torch.sigmoid(self.context_gate(h[-1])) * (alpha.unsqueeze(-1) * regions).sum(dim=0)  # (B, E) z_t
        x = self.dropout(torch.cat([self.embedding(tokens), z], dim=-1))  # (B, 2E) [E y_{t-1}; z_t]
        hidden, (h, c) = self.rnn.step(x, (h, c))  # (B, H)
        return self.output(self.dropout(hidden)), (h, c, regions, keys)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits, step by step (z_t needs h_{t-1}). features (B, L, D), tokens (B*repeats, T).
        lengths (B*repeats,): the real positions of each row. The rows then run by decreasing length and
        step t advances only the batch_sizes[t] captions still running (packing.py); later positions hold 0."""
        state = tuple(part.repeat_interleave(repeats, dim=1) for part in self.start(features))  # batch B*r
        sizes = [tokens.size(0)] * tokens.size(1)  # every row at every step
        if lengths is not None:
            packing = Packing.from_lengths(lengths, tokens.size(1))
            state = tuple(part.index_select(1, packing.sorted_indices) for part in state)  # rows by length
            tokens, sizes = tokens.index_select(0, packing.sorted_indices), packing.batch_sizes.tolist()
        logits = []
        for t, n in enumerate(sizes):
            step_logits, state = self.advance(tokens[:n, t], tuple(part[:, :n] for part in state))  # (n, V)
            logits.append(step_logits)
        if lengths is None:
            return torch.stack(logits, dim=1)  # (B*r, T, V)
        return packing.unpack(torch.cat(logits))  # (N, V) -> (B*r, T, V)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple]:
        logits, state = self.advance(tokens, state)
        return F.log_softmax(logits, dim=-1), state


class CurrentStateAttentionDecoder(nn.Module):
    """Spatial attention queried by the CURRENT state (Lu et al. 2017, "Knowing When to Look", sec. 2.2,
    without the sentinel): the LSTM reads [E y_{t-1}; v_g] (v_g a global image vector at every step),
    then looks at the regions with h_t, and the context joins h_t at the output:

        v_g = ReLU(W_g ā)   V = W_v A   (regions A (L, D) -> V (L, H), ā = mean_i a_i)
        h_t = StackedLSTM([E y_{t-1}; v_g], h_{t-1})            from h_0 = c_0 = 0
        e_t = w^T tanh(W_k V + W_q h_t 1^T)   α_t = softmax(e_t)   c_t = Σ_i α_ti V_i
        p(y_t) = softmax(W_o (h_t + c_t))

    No input of the LSTM depends on attention, so teacher forcing runs the whole caption in one
    StackedLSTM.forward (its fast path) and attends for all T at once, where Xu et al.'s h_{t-1}
    query needs a Python loop over time.
    """

    def __init__(self, *, region_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, attention_size: int = 0, num_regions: int = 0) -> None:
        super().__init__()
        A = attention_size or embed_size  # the (B, T, L, A) tanh is most of this decoder's cost
        self.region_projection = RegionProjection(region_dim, hidden_size, num_regions)  # W_v, + p_i
        self.global_projection = nn.Linear(region_dim, embed_size)  # W_g
        self.region_keys = nn.Linear(hidden_size, A)  # W_k
        self.state_query = nn.Linear(hidden_size, A)  # W_q
        self.score = nn.Linear(A, 1, bias=False)  # w (a bias would cancel in the softmax over regions)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = StackedLSTM(2 * embed_size, hidden_size, num_layers, dropout=dropout, cell=cell)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def image(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features (B, L, D) -> regions V (B, L, H), their keys W_k V (B, L, A), v_g (B, E)."""
        regions = self.region_projection(features)  # (B, L, H)
        global_image = F.relu(self.global_projection(features.mean(dim=1)))  # (B, E) v_g = ReLU(W_g ā)
        return regions, self.region_keys(regions), global_image

    def attend(self, hidden: torch.Tensor, regions: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H), regions (B, L, H), keys (B, L, A) -> context (B, T, H)."""
        query = self.state_query(hidden).unsqueeze(2)  # (B, T, 1, A) W_q h_t
        e = self.score(torch.tanh(keys.unsqueeze(1) + query)).squeeze(-1)  # (B, T, L) e_t
        alpha = torch.softmax(e, dim=-1)  # (B, T, L) α_t
        record(self, alpha.flatten(0, 1))  # (B*T, L)
        return alpha @ regions  # (B, T, H) c_t = Σ_i α_ti V_i

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits. features (B, L, D), tokens (B*repeats, T) -> (B*repeats, T, V). lengths
        (B*repeats,): the real positions of each row; the StackedLSTM and the output layer then run on
        those only (packing.py), attention on the padded batch, and later positions hold 0."""
        regions, keys, global_image = (part.repeat_interleave(repeats, dim=0) for part in self.image(features))
        words = self.embedding(tokens)  # (B*r, T, E)
        inputs = torch.cat([words, global_image.unsqueeze(1).expand_as(words)], dim=-1)  # (B*r, T, 2E)
        if lengths is None:
            hidden, _ = self.rnn(self.dropout(inputs))  # (B*r, T, H)
            return self.output(self.dropout(hidden + self.attend(hidden, regions, keys)))  # (B*r, T, V)
        packing = Packing.from_lengths(lengths, tokens.size(1))
        hidden = self.rnn(packing.sequence(self.dropout(packing.pack(inputs))))[0].data  # (N, H)
        context = packing.pack(self.attend(packing.unpack(hidden), regions, keys))  # (N, H)
        return packing.unpack(self.output(self.dropout(hidden + context)))  # (N, V) -> (B*r, T, V)

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """State (h, c, regions (L, B, H), keys (L, B, A), v_g (1, B, E)): batch on dim 1 for beam search."""
        regions, keys, global_image = self.image(features)
        h, c = self.rnn.initial_state(features.size(0), features.device, features.dtype)  # h_0 = c_0 = 0
        return h, c, regions.transpose(0, 1), keys.transpose(0, 1), global_image.unsqueeze(0)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple]:
        h, c, regions, keys, global_image = state
        x = torch.cat([self.embedding(tokens), global_image[0]], dim=-1)  # (B, 2E)
        hidden, (h, c) = self.rnn.step(x, (h, c))  # (B, H)
        context = self.attend(hidden.unsqueeze(1), regions.transpose(0, 1), keys.transpose(0, 1))[:, 0]  # (B, H)
        return F.log_softmax(self.output(hidden + context), dim=-1), (h, c, regions, keys, global_image)


ATTENTION_QUERIES = {"previous": AttentionDecoder, "current": CurrentStateAttentionDecoder}
