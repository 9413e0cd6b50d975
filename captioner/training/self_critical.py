"""Self-critical sequence training (Rennie et al. 2017), with the mean of the other samples as the
baseline (Luo 2020, "A Better Variant of Self-Critical Sequence Training"; ruotianluo/self-critical.pytorch).

Cross-entropy trains each word given the true previous words; captions are then generated from the
model's own words and scored with a metric the loss never saw. Self-critical training closes that gap:
for every image it samples K captions w^k, scores each with CIDEr-D r(w^k) against the image's
references, and follows the REINFORCE gradient with a baseline b^k that needs no learned critic:

    b^k = 1/(K-1) Σ_{j≠k} r(w^j)                           how good the other samples of this image were
    L   = -Σ_k (r(w^k) - b^k) · Σ_t log p(w^k_t | w^k_<t, I)   / number of sampled words

A caption better than its siblings is made more likely, a worse one less. The trainer runs this after
the cross-entropy epochs (train.self_critical_epochs), from the best cross-entropy checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from captioner.data.batches import pad_sequences
from captioner.data.records import ImageRecord
from captioner.decoding import Generation
from captioner.metrics.bleu import sentence_bleu4
from captioner.metrics.cider import CiderD
from captioner.vocab import tokenize

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # Captioner.forward, possibly DDP-wrapped


class SelfCriticalLoss:
    """The loss above for batches of training images, given by their indices into `records`."""

    def __init__(self, records: Sequence[ImageRecord], samples: int, reward: str = "cider") -> None:
        """samples >= 2 per image (train.self_critical_samples, checked when the config loads); reward:
        cider (CIDEr-D, coco-caption's x10 scale) | bleu4 (smoothed sentence BLEU-4 in [0, 1])."""
        self.references = [[tokenize(caption) for caption in record.captions] for record in records]
        self.cider = CiderD(self.references)  # document frequencies of the training references
        self.reward = self.cider.score if reward == "cider" else sentence_bleu4
        self.samples = samples

    def __call__(self, model, forward: Forward, features: torch.Tensor, indices: Sequence[int],
                 seed: int) -> tuple[torch.Tensor, float]:
        """features (B, ...) of images `indices` -> (loss, mean reward of the samples).

        Run with the model in eval mode: the words are sampled without dropout, so the teacher-forced
        pass that computes their log-probabilities must see the same network (no dropout) to be on-policy.
        The samples keep the model's own max_length and <unk> rule, as the captions users see are made."""
        K, vocab = self.samples, model.vocab
        sampling = replace(model.decoding, temperature=1.0, num_samples=K, seed=seed)
        generations = model.generate(features=features, decoding=sampling)  # per image, its K samples as alternatives
        rewards = torch.tensor([[self.reward(words, self.references[index]) for words in generation.words]
                                for index, generation in zip(indices, generations)])  # (B, K)
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (K - 1)  # (B, K) b^k: mean of the others
        advantage = (rewards - baseline).view(-1).to(features.device)  # (B*K,): row b*K + k
        tokens = sampled_tokens(generations, vocab.start_id, vocab.end_id, vocab.pad_id).to(features.device)
        logits, _ = forward(None, tokens, features=features, captions_per_image=K)  # (B*K, T-1, V)
        targets = tokens[:, 1:]  # (B*K, T-1) the sampled words and <end>
        word_log_probs = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        mask = (targets != vocab.pad_id).float()  # (B*K, T-1)
        loss = -(advantage.unsqueeze(1) * word_log_probs * mask).sum() / mask.sum().clamp(min=1)
        return loss, rewards.mean().item()


def sampled_tokens(generations: Sequence[Generation], start_id: int, end_id: int, pad_id: int) -> torch.Tensor:
    """Every alternative of every generation as <start> w_1 .. w_n <end> <pad>.. (B*K, T), rows b*K + k;
    a caption that reached the length limit has no <end>, and no log-probability is counted for one."""
    return pad_sequences([[start_id, *tokens, *([end_id] if finished else [])]
                          for g in generations for tokens, finished in zip(g.token_ids, g.finished)], pad_id)
