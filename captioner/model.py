"""The captioner: CNN encoder -> image embedding -> explicit stacked LSTM -> word logits.

Show and Tell (Vinyals et al. 2015): the projected image feature is the recurrent network's input at
step -1, from h_0 = c_0 = 0; then <start> and the caption's words follow.

    inputs   x_-1 = W_I CNN(I)   x_0 = W_e <start>   x_1 = W_e w_1   ...   x_T-1 = W_e w_T-1
    targets          -            w_1                  w_2          ...   <end>
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from captioner.config import Config, ConfigError
from captioner.decoding import Generation, beam_search, sample
from captioner.encoders import Encoder, build_encoder
from captioner.lstm import StackedLSTM
from captioner.scorer import ImageSentenceScorer, rerank_generations
from captioner.vocab import Vocabulary

State = tuple[torch.Tensor, torch.Tensor]


IMAGE_INPUTS = ("first_input", "initial_state")  # where Decoder feeds the image (model.image_as)


def initial_state(init_h: nn.Linear, init_c: nn.Linear, image: torch.Tensor, num_layers: int) -> State:
    """h_0 = tanh(W_h v), c_0 = tanh(W_c v) for every layer, from an image vector v (B, D) -> (layers, B, H) each."""
    B = image.size(0)
    h = torch.tanh(init_h(image)).view(B, num_layers, -1).transpose(0, 1)  # (layers, B, H) h_0 = tanh(W_h v)
    c = torch.tanh(init_c(image)).view(B, num_layers, -1).transpose(0, 1)  # (layers, B, H) c_0 = tanh(W_c v)
    return h.contiguous(), c.contiguous()


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

    def __init__(self, region_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, attention_size: int = 0) -> None:
        super().__init__()
        A = attention_size or embed_size
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.region_projection = nn.Linear(region_dim, embed_size)
        self.init_h = nn.Linear(embed_size, num_layers * hidden_size)
        self.init_c = nn.Linear(embed_size, num_layers * hidden_size)
        self.region_keys = nn.Linear(embed_size, A)  # W_a
        self.state_query = nn.Linear(hidden_size, A)  # W_h
        self.score = nn.Linear(A, 1)  # w
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
        z = torch.sigmoid(self.context_gate(h[-1])) * (alpha.unsqueeze(-1) * regions).sum(dim=0)  # (B, E) z_t
        x = self.dropout(torch.cat([self.embedding(tokens), z], dim=-1))  # (B, 2E) [E y_{t-1}; z_t]
        hidden, (h, c) = self.rnn.step(x, (h, c))  # (B, H)
        return self.output(self.dropout(hidden)), (h, c, regions, keys)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Teacher-forced logits, step by step (z_t needs h_{t-1}). features (B, L, D), tokens (B*repeats, T)."""
        state = tuple(part.repeat_interleave(repeats, dim=1) for part in self.start(features))  # batch B*repeats
        logits = []
        for t in range(tokens.size(1)):
            step_logits, state = self.advance(tokens[:, t], state)  # (B*r, V)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # (B*r, T, V)

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

    def __init__(self, region_dim: int, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, cell: str, dropout: float, attention_size: int = 0) -> None:
        super().__init__()
        A = attention_size or embed_size  # the (B, T, L, A) tanh is most of this decoder's cost
        self.region_projection = nn.Linear(region_dim, hidden_size)  # W_v
        self.global_projection = nn.Linear(region_dim, embed_size)  # W_g
        self.region_keys = nn.Linear(hidden_size, A)  # W_k
        self.state_query = nn.Linear(hidden_size, A)  # W_q
        self.score = nn.Linear(A, 1)  # w
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
        return alpha @ regions  # (B, T, H) c_t = Σ_i α_ti V_i

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Teacher-forced logits. features (B, L, D), tokens (B*repeats, T) -> (B*repeats, T, V)."""
        regions, keys, global_image = (part.repeat_interleave(repeats, dim=0) for part in self.image(features))
        words = self.embedding(tokens)  # (B*r, T, E)
        inputs = torch.cat([words, global_image.unsqueeze(1).expand_as(words)], dim=-1)  # (B*r, T, 2E)
        hidden, _ = self.rnn(self.dropout(inputs))  # (B*r, T, H)
        context = self.attend(hidden, regions, keys)  # (B*r, T, H)
        return self.output(self.dropout(hidden + context))  # (B*r, T, V)

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


class Captioner(nn.Module):
    """Encoder + decoder + vocabulary; `forward` trains, `generate` captions."""

    def __init__(self, config: Config, vocab: Vocabulary, encoder: Encoder | None = None) -> None:
        super().__init__()
        model = config.model
        self.config = config
        self.vocab = vocab
        self.encoder = encoder or build_encoder(model.backbone, model.pretrained)
        if model.freeze_encoder:
            self.encoder.freeze(model.finetune_blocks)
        elif model.finetune_blocks:
            raise ConfigError(f"model.finetune_blocks={model.finetune_blocks} needs model.freeze_encoder=true "
                              "(without it the whole encoder trains)")
        if model.attention:
            if model.attention_query not in ATTENTION_QUERIES:
                raise ConfigError(f"model.attention_query: expected one of {', '.join(ATTENTION_QUERIES)}, "
                                  f"got {model.attention_query!r}")
            self.decoder = ATTENTION_QUERIES[model.attention_query](
                self.encoder.use_regions(), len(vocab), model.embed_size, model.hidden_size, model.num_layers,
                model.cell, model.dropout, model.attention_size)
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
        logits = self.decoder(features, captions[:, :-1], captions_per_image)  # (B*C, L-1, V), each image projected once
        targets = captions[:, 1:]  # (B, L-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.vocab.pad_id, label_smoothing=self.config.train.label_smoothing)
        return logits, loss

    @torch.no_grad()
    def generate(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None,
                 beam_size: int = 1, max_length: int = 20, temperature: float = 0.0,
                 length_penalty: float = 0.0, seed: int | None = None, rerank: bool = False,
                 rerank_weight: float = 1.0) -> list[Generation]:
        """Caption a batch: beam search (beam_size 1 = greedy) or, with temperature > 0, sampling.
        Used by validation, evaluation, the CLI and the demo alike. rerank=True reorders each image's
        alternatives by log p + rerank_weight · score with the attached scorer (`model.scorer =
        load_scorer(path)`, captioner/scorer.py; it must be trained on this captioner's features)."""
        if features is None:
            features = self.encoder(images)  # (B, F)
        state = self.decoder.start(features)
        vocab = self.vocab
        if temperature > 0:
            results = sample(self.decoder.step, state, vocab.start_id, vocab.end_id, max_length, temperature, seed)
        else:
            results = beam_search(self.decoder.step, state, vocab.start_id, vocab.end_id, beam_size,
                                  max_length, length_penalty)
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

