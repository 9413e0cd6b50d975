"""The captioner: CNN encoder -> image embedding -> explicit stacked LSTM -> word logits.

Show and Tell (Vinyals et al. 2015): the projected image feature is the recurrent network's input at
step -1, from h_0 = c_0 = 0; then <start> and the caption's words follow. (Attention decoders:
attention.py.)

    inputs   x_-1 = W_I CNN(I)   x_0 = W_e <start>   x_1 = W_e w_1   ...   x_T-1 = W_e w_T-1
    targets          -            w_1                  w_2          ...   <end>
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from captioner.attention import ATTENTION_QUERIES, initial_state
from captioner.config import Config, ConfigError
from captioner.decoding import Generation, beam_search, sample
from captioner.encoders import Encoder, build_encoder
from captioner.lstm import State, StackedLSTM
from captioner.scorer import ImageSentenceScorer, rerank_generations
from captioner.vocab import Vocabulary

IMAGE_INPUTS = ("first_input", "initial_state")  # where Decoder feeds the image (model.image_as)


class Decoder(nn.Module):
    """Word embedding + StackedLSTM + output layer. The image enters as the input before <start>
    (image_as="first_input", Show and Tell) or as the initial state (image_as="initial_state",
    h_0, c_0 = tanh(W f) as Xu et al. 2015 initialise theirs): with a frozen feature as the only view
    of the image, the initial state binds the words to the image in far fewer steps."""

    def __init__(self, feature_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, image_as: str = "first_input") -> None:
        super().__init__()
        if image_as not in IMAGE_INPUTS:
            raise ConfigError(f"model.image_as: expected one of {', '.join(IMAGE_INPUTS)}, got {image_as!r}")
        self.image_as, self.num_layers = image_as, num_layers
        if image_as == "first_input":
            self.image_projection = nn.Linear(feature_dim, embed_size)
        else:
            self.init_h = nn.Linear(feature_dim, num_layers * hidden_size)
            self.init_c = nn.Linear(feature_dim, num_layers * hidden_size)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = StackedLSTM(embed_size, hidden_size, num_layers, dropout=dropout, cell=cell)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Teacher-forced logits. features (B, F), tokens (B*repeats, T) starting with <start> -> (B*repeats, T, V);
        token rows b*repeats .. b*repeats+repeats-1 are captions of image b."""
        words = self.embedding(tokens)  # (B, T, E)
        if self.image_as == "initial_state":
            state = tuple(part.repeat_interleave(repeats, dim=1) for part in self.start(features))  # (layers, B*r, H)
            hidden, _ = self.rnn(self.dropout(words), state)  # (B*r, T, H)
            return self.output(self.dropout(hidden))  # (B*r, T, V)
        image = self.image_projection(features).repeat_interleave(repeats, dim=0).unsqueeze(1)  # (B*r, 1, E)
        inputs = self.dropout(torch.cat([image, words], dim=1))  # (B, T+1, E)
        hidden, _ = self.rnn(inputs)  # (B, T+1, H)
        return self.output(self.dropout(hidden[:, 1:]))  # (B, T, V): drop the image step's output

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


class Captioner(nn.Module):
    """Encoder + decoder + vocabulary; `forward` trains, `generate` captions."""

    def __init__(self, config: Config, vocab: Vocabulary, encoder: Encoder | None = None) -> None:
        super().__init__()
        model = config.model
        self.config = config
        self.vocab = vocab
        self.encoder = encoder or build_encoder(model.backbone, model.pretrained, model.image_fit, model.image_size)
        if model.freeze_encoder:
            self.encoder.freeze(model.finetune_blocks)
        elif model.finetune_blocks:
            raise ConfigError(f"model.finetune_blocks={model.finetune_blocks} needs model.freeze_encoder=true "
                              "(without it the whole encoder trains)")
        if model.attention:
            if model.attention_query not in ATTENTION_QUERIES:
                raise ConfigError(f"model.attention_query: expected one of {', '.join(ATTENTION_QUERIES)}, "
                                  f"got {model.attention_query!r}")
            region_dim = self.encoder.use_regions()
            num_regions = self.encoder.num_regions if model.region_positions else 0
            self.decoder = ATTENTION_QUERIES[model.attention_query](
                region_dim, len(vocab), model.embed_size, model.hidden_size, model.num_layers,
                model.cell, model.dropout, model.attention_size, num_regions)
        else:
            self.decoder = Decoder(self.encoder.feature_dim, len(vocab), model.embed_size, model.hidden_size,
                                   model.num_layers, model.cell, model.dropout, model.image_as)
        self.scorer: ImageSentenceScorer | None = None  # attached for reranking only (see generate)

    def parameter_groups(self) -> list[dict]:
        """Trainable parameters for the optimizer: fine-tuned encoder blocks in their own group at
        train.encoder_learning_rate (pretrained weights need small steps), the rest at train.learning_rate."""
        train = self.config.train
        finetuned = [p for block in self.encoder.trainable_blocks for p in block.parameters()]
        finetuned_ids = {id(p) for p in finetuned}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in finetuned_ids]
        groups = [{"params": rest, "lr": train.learning_rate}]
        if finetuned:
            groups.append({"params": finetuned, "lr": train.encoder_learning_rate})
        return groups

    def forward(self, images: torch.Tensor | None, captions: torch.Tensor,
                features: torch.Tensor | None = None, captions_per_image: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The one loss. images uint8 (B, 3, S, S) or precomputed features (B, F); captions (B*C, L)
        as <start> w_1 .. w_n <end> <pad>.., C = captions_per_image, rows b*C .. b*C+C-1 for image b (each
        image is encoded once) -> (logits (B*C, L-1, V), mean cross-entropy over real words)."""
        if features is None:
            features = self.encoder(images)  # (B, F)
        inputs = captions[:, :-1]  # (B*C, L-1)
        if self.training and self.config.train.scheduled_sampling > 0:
            inputs = self.mix_in_predictions(features, inputs, captions_per_image)
        logits = self.decoder(features, inputs, captions_per_image)  # (B*C, L-1, V), each image projected once
        targets = captions[:, 1:]  # (B, L-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.vocab.pad_id, label_smoothing=self.config.train.label_smoothing)
        return logits, loss

    @torch.no_grad()
    def mix_in_predictions(self, features: torch.Tensor, inputs: torch.Tensor, repeats: int) -> torch.Tensor:
        """Parallel scheduled sampling (Duckworth et al. 2019): each input word w_{t-1} after <start> is,
        with probability train.scheduled_sampling, replaced by a word sampled from the model's own
        teacher-forced prediction for that position, so training meets the mistakes generation makes."""
        logits = self.decoder(features, inputs, repeats)  # (B*C, T, V): column t predicts input t+1
        predicted = torch.distributions.Categorical(logits=logits.float()).sample()  # (B*C, T)
        guesses = torch.cat([inputs[:, :1], predicted[:, :-1]], dim=1)  # (B*C, T): the guess for each input
        replace = torch.rand(inputs.shape, device=inputs.device) < self.config.train.scheduled_sampling
        replace[:, 0] = False  # <start> stays
        return torch.where(replace & (inputs != self.vocab.pad_id), guesses, inputs)

    @torch.no_grad()
    def generate(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None,
                 beam_size: int = 1, max_length: int = 20, temperature: float = 0.0,
                 length_penalty: float = 0.0, seed: int | None = None, rerank: bool = False,
                 rerank_weight: float = 1.0, no_repeat_ngram_size: int | None = None,
                 num_samples: int = 1) -> list[Generation]:
        """Caption a batch: beam search (beam_size 1 = greedy) or, with temperature > 0, sampling.
        Used by validation, evaluation, the CLI, the demo and self-critical training alike.
        no_repeat_ngram_size (beam search only) defaults to the model's own eval.no_repeat_ngram_size;
        num_samples (sampling only) draws that many captions per image, its alternatives. rerank=True reorders each image's
        alternatives by log p + rerank_weight · score with the attached scorer (`model.scorer =
        load_scorer(path)`, captioner/scorer.py; it must be trained on this captioner's features)."""
        if features is None:
            features = self.encoder(images)  # (B, F)
        state = self.decoder.start(features)
        vocab = self.vocab
        if temperature > 0:
            results = sample(self.decoder.step, state, vocab.start_id, vocab.end_id, max_length, temperature, seed,
                             num_samples)
        else:
            if no_repeat_ngram_size is None:
                no_repeat_ngram_size = self.config.eval.no_repeat_ngram_size
            results = beam_search(self.decoder.step, state, vocab.start_id, vocab.end_id, beam_size,
                                  max_length, length_penalty, no_repeat_ngram_size)
        for result in results:
            result.words = [vocab.decode_tokens(tokens) for tokens in result.token_ids]
        if rerank:
            if self.scorer is None:
                raise ValueError("generate(rerank=True): no scorer attached; set model.scorer = load_scorer(path)")
            results = rerank_generations(results, features, self.scorer, rerank_weight, length_penalty)
        return results

    def caption(self, images: list[Image.Image], beam_size: int = 3, max_length: int = 20) -> list[str]:
        """list[PIL.Image] -> list[str]: the public one-liner over `generate`."""
        device = next(self.parameters()).device
        batch = torch.stack([self.encoder.preprocess(image.convert("RGB")) for image in images]).to(device)
        was_training = self.training
        self.eval()
        generations = self.generate(batch, beam_size=beam_size, max_length=max_length)
        self.train(was_training)
        return [" ".join(generation.words[0]) for generation in generations]

