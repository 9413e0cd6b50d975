"""The image–sentence scorer: how well does a sentence fit an image? Model, ranking loss, retrieval
checkpoint. (Retrieval R@K: captioner/metrics/retrieval.py; reranking a beam: captioner/scorer/rerank.py.)

Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments", score an image–sentence pair with a
bidirectional RNN over the sentence's words; we keep their BRNN but compare one sentence vector with one
image vector (the global form of Kiros et al. 2014), trained with VSE++'s hinge over the hardest negatives
in the batch (Faghri et al. 2018):

    v   = normalize(W_v f_I + b_v)                      (J,)   f_I: the captioner's frozen encoder feature
    h_t = [h→_t ; h←_t]                                 (2H,)  bidirectional StackedLSTM over W_e w_t
    s   = normalize(W_s pool(h_1 .. h_T) + b_s)         (J,)   pool: mean over t, or [h→_T ; h←_1]
    S_kl = v_k · s_l                                    cosine similarity of image k and sentence l
    loss = mean_k max_{l≠k} [m − S_kk + S_kl]_+  +  mean_l max_{k≠l} [m − S_ll + S_kl]_+

Sentences are <start> w_1 .. w_n <end>. Sentences of one length are run together, so no padding ever
enters the backward direction and a sentence's score does not depend on what it is batched with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.checkpoint import CheckpointError, read_checkpoint
from captioner.rnn.stacked import StackedLSTM
from captioner.vocab import Vocabulary

POOLINGS = ("mean", "final")


@dataclass
class ScorerSettings:
    """Everything needed to rebuild an ImageSentenceScorer; stored inside its checkpoint."""

    feature_dim: int  # F, the image feature size of the encoder it was trained on
    embed_size: int = 128  # E, word embedding size
    hidden_size: int = 256  # H per direction; the joined state is 2H
    num_layers: int = 1  # bidirectional layers
    cell: str = "lstm"  # rnn | lstm | peephole | coupled | gru
    joint_size: int = 256  # J, the shared image–sentence space
    pooling: str = "mean"  # mean | final
    dropout: float = 0.0  # on the word embeddings and between layers


class ImageSentenceScorer(nn.Module):
    """Image features (N, F) and word-id sentences -> unit vectors in one space; cosine = score."""

    def __init__(self, vocab: Vocabulary, settings: ScorerSettings) -> None:
        super().__init__()
        if settings.pooling not in POOLINGS:
            raise ValueError(f"scorer.pooling: expected one of {', '.join(POOLINGS)}, got {settings.pooling!r}")
        self.vocab, self.settings = vocab, settings
        self.image_projection = nn.Linear(settings.feature_dim, settings.joint_size)
        self.embedding = nn.Embedding(len(vocab), settings.embed_size)
        self.dropout = nn.Dropout(settings.dropout)
        self.rnn = StackedLSTM(settings.embed_size, settings.hidden_size, settings.num_layers, dropout=settings.dropout,
                               cell=settings.cell, bidirectional=True)
        self.sentence_projection = nn.Linear(2 * settings.hidden_size, settings.joint_size)

    def embed_images(self, features: Tensor) -> Tensor:
        """features (N, F), or per-region (N, R, F) from an attention captioner's encoder -> v (N, J), unit length."""
        if features.dim() == 3:
            features = features.mean(dim=1)  # (N, F): mean over regions, in training and reranking alike
        if features.dim() != 2 or features.shape[1] != self.settings.feature_dim:
            size = self.settings.feature_dim
            raise ValueError(f"scorer: image features must be (N, {size}) or (N, R, {size}), from the encoder it was "
                             f"trained on; got {tuple(features.shape)}")
        return F.normalize(self.image_projection(features), dim=-1)  # (N, J)

    def embed_sentences(self, sentences: Sequence[Sequence[int]]) -> Tensor:
        """Word-id lists -> s (N, J), unit length; grouped by length so nothing is padded."""
        if not sentences or any(len(sentence) == 0 for sentence in sentences):
            raise ValueError("scorer: sentences must be a non-empty list of non-empty word-id lists")
        device = self.embedding.weight.device
        groups: dict[int, list[int]] = {}
        for index, sentence in enumerate(sentences):
            groups.setdefault(len(sentence), []).append(index)
        vectors, order = [], []
        for indices in groups.values():
            tokens = torch.tensor([list(sentences[i]) for i in indices], device=device)  # (n, T)
            vectors.append(self._embed_equal_length(tokens))  # (n, J)
            order += indices
        joined = torch.cat(vectors)  # (N, J) in group order
        return joined[torch.argsort(torch.tensor(order, device=device))]  # back to input order

    def _embed_equal_length(self, tokens: Tensor) -> Tensor:
        words = self.dropout(self.embedding(tokens))  # (n, T, E)
        states, (h_n, _) = self.rnn(words)  # (n, T, 2H), (2L, n, H)
        if self.settings.pooling == "mean":
            pooled = states.mean(dim=1)  # (n, 2H)  mean_t [h→_t ; h←_t]
        else:
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (n, 2H)  [h→_T ; h←_1] of the top layer
        return F.normalize(self.sentence_projection(pooled), dim=-1)  # (n, J)

    def forward(self, features: Tensor, sentences: Sequence[Sequence[int]]) -> Tensor:
        """S (N_images, N_sentences): cosine similarity of every image with every sentence."""
        return self.embed_images(features) @ self.embed_sentences(sentences).t()  # S_kl = v_k · s_l

    def score(self, features: Tensor, sentences: Sequence[Sequence[int]]) -> Tensor:
        """Pairwise scores (N,): image i with sentence i."""
        return (self.embed_images(features) * self.embed_sentences(sentences)).sum(-1)  # v_i · s_i

    def encode_words(self, words: Sequence[str]) -> list[int]:
        """A caption's words (e.g. Generation.words[k]) -> <start> ids <end> in this scorer's vocabulary."""
        return [self.vocab.start_id, *(self.vocab.word_id(word) for word in words), self.vocab.end_id]


def ranking_loss(similarity: Tensor, margin: float = 0.2, hardest: bool = True,
                 also_positive: Tensor | None = None) -> Tensor:
    """Bidirectional max-margin loss. similarity (B, B): S_kl for image k, sentence l; S_kk are the pairs.

    also_positive (B, B) bool marks off-diagonal pairs that must not count as negatives (e.g. two images
    with the same caption). hardest=True takes the hardest negative per row and column (VSE++),
    hardest=False sums over all negatives (the older hinge of Kiros et al.)."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"ranking_loss: similarity must be square (B, B), got {tuple(similarity.shape)}")
    positive = similarity.diagonal()  # (B,)  S_kk
    not_negative = torch.eye(len(positive), dtype=torch.bool, device=similarity.device)
    if also_positive is not None:
        not_negative = not_negative | also_positive
    wrong_sentence = (margin - positive[:, None] + similarity).clamp(min=0)  # [m − S_kk + S_kl]_+  (B, B)
    wrong_image = (margin - positive[None, :] + similarity).clamp(min=0)  # [m − S_ll + S_kl]_+  (B, B)
    wrong_sentence = wrong_sentence.masked_fill(not_negative, 0.0)
    wrong_image = wrong_image.masked_fill(not_negative, 0.0)
    if hardest:
        return wrong_sentence.max(dim=1).values.mean() + wrong_image.max(dim=0).values.mean()
    return wrong_sentence.sum(dim=1).mean() + wrong_image.sum(dim=0).mean()


def scorer_payload(scorer: ImageSentenceScorer, config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The scorer's checkpoint dict: plain data only (`torch.load(weights_only=True)` safe)."""
    return {"kind": "scorer", "settings": asdict(scorer.settings), "vocab": scorer.vocab.to_dict(),
            "model": scorer.state_dict(), "config": config, "metrics": metrics}


def load_scorer(path: str | Path, device: str | torch.device = "cpu") -> ImageSentenceScorer:
    """Rebuild a trained scorer (eval mode) from its checkpoint, for `rerank_generations`."""
    payload = read_checkpoint(path, map_location=device)
    if payload.get("kind") != "scorer":
        raise CheckpointError(f"{path}: not an image–sentence scorer checkpoint (train one with configs/scorer.yaml)")
    try:
        scorer = ImageSentenceScorer(Vocabulary.from_dict(payload["vocab"]), ScorerSettings(**payload["settings"]))
        scorer.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: scorer checkpoint does not fit its own settings ({error})") from None
    scorer.metrics = payload.get("metrics", {})
    return scorer.to(device).eval()
