"""The captioner: CNN encoder -> decoder around the explicit StackedLSTM -> word logits; and the one
place a captioner is rebuilt from a checkpoint (`load_checkpoint`).

The model is built from `ModelConfig` only. Training options (label smoothing, scheduled sampling) are
arguments of `forward`, given by the trainer; how `generate` decodes is one `Decoding`, by default the
model's own (`model.decoding`: its run's eval section, or `EvalConfig`'s defaults for a new model).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from captioner.checkpoint import CheckpointError, check_compatible, read_checkpoint
from captioner.config import Config, ConfigError, EvalConfig, ModelConfig, from_dict
from captioner.decoders.attention import ATTENTION_QUERIES
from captioner.decoders.show_and_tell import Decoder
from captioner.decoding import Decoding, Generation, beam_search, sample
from captioner.devices import available_device
from captioner.encoders.backbones import Encoder, EncoderError, build_encoder
from captioner.modes import evaluating
from captioner.release_format import save_release
from captioner.vocab import FUNCTION_WORDS, SPECIAL_TOKENS, Vocabulary

RETIRED_WEIGHTS = ("decoder.score.bias",)  # the attention score's bias: the softmax cancels it, it never learned


class Captioner(nn.Module):
    """Encoder + decoder + vocabulary; `forward` trains, `generate` captions."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.encoder = encoder or build_encoder(config.backbone, config.pretrained, config.image_fit, config.image_size)
        if config.freeze_encoder:
            self.encoder.freeze(config.finetune_blocks)
        elif config.finetune_blocks:
            raise ConfigError(f"model.finetune_blocks={config.finetune_blocks} needs model.freeze_encoder=true "
                              "(without it the whole encoder trains)")
        self.decoder = build_decoder(config, self.encoder, len(vocab))
        content = [word not in FUNCTION_WORDS and word not in SPECIAL_TOKENS for word in vocab.words]
        self.register_buffer("content_words", torch.tensor(content), persistent=False)  # (V,) built once, moves with .to()
        self.run_config: Config | None = None  # the whole run's config, set by load_checkpoint
        self.decoding: Decoding = EvalConfig().decoding()  # generate()'s default; load_checkpoint sets the run's
        self.metrics: dict[str, Any] = {}  # the checkpoint's validation metrics, set by load_checkpoint

    def forward(self, images: torch.Tensor | None, captions: torch.Tensor, features: torch.Tensor | None = None,
                captions_per_image: int = 1, label_smoothing: float = 0.0,
                scheduled_sampling: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The one loss. images uint8 (B, 3, S, S) or precomputed features (B, F); captions (B*C, L)
        as <start> w_1 .. w_n <end> <pad>.., C = captions_per_image, rows b*C .. b*C+C-1 for image b (each
        image is encoded once) -> (logits (B*C, L-1, V), mean cross-entropy over real words)."""
        if features is None:
            features = self.encoder(images)  # (B, F)
        inputs = captions[:, :-1]  # (B*C, L-1)
        if self.training and scheduled_sampling > 0:
            inputs = self.mix_in_predictions(features, inputs, captions_per_image, scheduled_sampling)
        targets = captions[:, 1:]  # (B*C, L-1)
        lengths = (targets != self.vocab.pad_id).sum(dim=1)  # (B*C,) real words: no work on padding
        logits = self.decoder(features, inputs, captions_per_image, lengths)  # (B*C, L-1, V), 0 past the ends
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.vocab.pad_id, label_smoothing=label_smoothing)
        return logits, loss

    @torch.no_grad()
    def mix_in_predictions(self, features: torch.Tensor, inputs: torch.Tensor, repeats: int,
                           probability: float) -> torch.Tensor:
        """Parallel scheduled sampling (Duckworth et al. 2019): each input word w_{t-1} after <start> is,
        with `probability`, replaced by a word sampled from the model's own teacher-forced prediction for
        that position, so training meets the mistakes generation makes."""
        logits = self.decoder(features, inputs, repeats)  # (B*C, T, V): column t predicts input t+1
        predicted = torch.distributions.Categorical(logits=logits.float()).sample()  # (B*C, T)
        guesses = torch.cat([inputs[:, :1], predicted[:, :-1]], dim=1)  # (B*C, T): the guess for each input
        replace = torch.rand(inputs.shape, device=inputs.device) < probability
        replace[:, 0] = False  # <start> stays
        return torch.where(replace & (inputs != self.vocab.pad_id), guesses, inputs)

    @torch.no_grad()
    def generate(self, images: torch.Tensor | None = None, decoding: Decoding | None = None, *,
                 features: torch.Tensor | None = None) -> list[Generation]:
        """Caption a batch (uint8 images, or the encoder's `features`) as `decoding` says, by default
        the model's own: beam search (beam_size 1 = greedy) or, with temperature > 0, sampling.
        Used by validation, evaluation, the API, the demo and self-critical training alike.
        <unk> is never generated unless allow_unknown_word; <pad> and <start> never are. The repeat
        controls apply to beam search; num_samples (sampling only) draws that many captions per image,
        its alternatives. To rerank the alternatives with an image–sentence scorer, pass the result to
        `captioner.scorer.rerank.rerank_generations`."""
        decoding = self.decoding if decoding is None else decoding
        if features is None:
            features = self.encoder(images)  # (B, F)
        state = self.decoder.start(features)
        vocab = self.vocab
        ruled_out = self.ruled_out_words(decoding.allow_unknown_word, features.device)
        step = partial(self.next_word, ruled_out=ruled_out)  # the ruled-out ids built once, not per step
        start, end = vocab.start_id, vocab.end_id
        if decoding.temperature > 0:
            results = sample(step, state, start, end, decoding.max_length, decoding.temperature, decoding.seed,
                             decoding.num_samples)
        else:
            penalty = float("inf") if decoding.no_repeat_content_words else decoding.content_word_repeat_penalty
            repeat_penalty = None
            if penalty > 0:
                repeat_penalty = torch.where(self.content_words, penalty, 0.0)  # (V,)
            results = beam_search(step, state, start, end, decoding.beam_size, decoding.max_length,
                                  decoding.length_penalty, decoding.no_repeat_ngram_size, repeat_penalty)
        for result in results:
            result.words = [vocab.decode_tokens(tokens) for tokens in result.token_ids]
        return results

    def next_word(self, tokens: torch.Tensor, state: tuple, allow_unknown_word: bool | None = None,
                  ruled_out: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        """The decoder's step with <pad>, <start> and (unless allowed) <unk> ruled out: log p(w | ...)
        renormalised over the words a caption can hold (and <end>). tokens (B,) -> ((B, V), state).
        allow_unknown_word None: the model's own (`model.decoding`), as the API and the demo generate with;
        ruled_out: the ids from `ruled_out_words`, when a caller steps many times (generate)."""
        log_probs, state = self.decoder.step(tokens, state)  # (B, V)
        if ruled_out is None:
            ruled_out = self.ruled_out_words(allow_unknown_word, log_probs.device)
        return torch.log_softmax(log_probs.index_fill(-1, ruled_out, float("-inf")), dim=-1), state

    def ruled_out_words(self, allow_unknown_word: bool | None, device: torch.device) -> torch.Tensor:
        """(n,) ids no caption may hold: <pad>, <start>, and <unk> unless allowed (None: the model's own)."""
        if allow_unknown_word is None:
            allow_unknown_word = self.decoding.allow_unknown_word
        never = [self.vocab.pad_id, self.vocab.start_id] + ([] if allow_unknown_word else [self.vocab.unk_id])
        return torch.tensor(never, device=device)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The encoder's one transform, on the model's device: list[PIL.Image] -> uint8 (B, 3, S, S)."""
        device = next(self.parameters()).device
        return torch.stack([self.encoder.preprocess(image) for image in images]).to(device)

    def caption(self, images: list[Image.Image], decoding: Decoding | None = None) -> list[str]:
        """list[PIL.Image] -> list[str]: the public one-liner over `generate`, decoding as the checkpoint's
        evaluation does unless `decoding` says otherwise, e.g. `replace(model.decoding, beam_size=5)`."""
        with evaluating(self):
            generations = self.generate(self.pixels(images), decoding)
        return [" ".join(generation.words[0]) for generation in generations]

    def save_pretrained(self, directory: str | Path, dtype: str = "float32", overwrite: bool = False,
                        **details: Any) -> None:
        """Write this model as a release directory (config.json, model.safetensors, README.md), which
        `captioner.from_pretrained(directory)` loads. Atomic: the directory appears complete or not at
        all, and an existing one is replaced only with `overwrite`. `details`: metrics, provenance and
        examples for config.json and the model card (captioner/release_format.py)."""
        save_release(self, directory, dtype, overwrite=overwrite, **details)


def build_decoder(config: ModelConfig, encoder: Encoder, vocab_size: int) -> nn.Module:
    """Show and Tell on the pooled feature, or soft attention over the encoder's map (model.attention)."""
    sizes = dict(vocab_size=vocab_size, embed_size=config.embed_size, hidden_size=config.hidden_size,
                 num_layers=config.num_layers, cell=config.cell, dropout=config.dropout)
    if not config.attention:
        return Decoder(feature_dim=encoder.feature_dim, image_as=config.image_as, **sizes)
    region_dim = encoder.use_regions()
    num_regions = encoder.num_regions if config.region_positions else 0
    return ATTENTION_QUERIES[config.attention_query](region_dim=region_dim, attention_size=config.attention_size,
                                                     num_regions=num_regions, **sizes)


def current_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as this version names them: weights retired since it was saved are dropped."""
    return {name: value for name, value in state.items() if name not in RETIRED_WEIGHTS}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Captioner:
    """Rebuild a ready-to-use `Captioner` (eval mode) from a checkpoint file. The run's whole config
    and its metrics come along as `model.run_config` and `model.metrics`. Anything wrong with the
    file or the model it describes is a CheckpointError naming it, before any large allocation."""
    device = available_device(device)  # map_location="cuda" without CUDA would read as a damaged file
    payload = read_checkpoint(path, map_location=device)
    try:
        run_config = from_dict(payload["config"])
        vocab = Vocabulary.from_dict(payload["vocab"])
    except (ConfigError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: invalid config or vocabulary inside the checkpoint ({error})") from None
    run_config.model.pretrained = False  # the checkpoint holds every weight; never download at load time
    weights = current_weights(payload["model"])
    with torch.device("meta"):  # shapes only, no memory: a crafted config (hidden_size 20000) allocates nothing
        check_compatible(build_captioner(run_config.model, vocab, path).state_dict(), weights, path)
    model = build_captioner(run_config.model, vocab, path)  # now its weights are the checkpoint's size
    model.load_state_dict(weights)
    model.run_config = run_config
    model.decoding = run_config.eval.decoding()
    metrics = payload.get("metrics", {})
    model.metrics = metrics if isinstance(metrics, dict) else {}  # read by the demo's summary
    return model.to(device).eval()


def build_captioner(config: ModelConfig, vocab: Vocabulary, path: str | Path) -> Captioner:
    """The Captioner a checkpoint's (or release's) model config describes; one this code cannot build
    is a CheckpointError naming `path`."""
    try:
        return Captioner(config, vocab)
    except (ConfigError, EncoderError, ValueError, TypeError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: the model config it holds cannot be built ({reason})") from None
