"""Prove, then learn: loss at init ≈ ln V, every parameter gets a gradient, one batch can be overfit."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from benchmarks.workload import caption_batch, shapes_config, shapes_vocabulary
from captioner.config import Config
from captioner.model import Captioner
from captioner.rnn.cells import MEMORY_CELLS
from captioner.vocab import Vocabulary

CAPTIONS = ["a red circle", "a small blue square", "two shapes a red circle and a green triangle",
            "a large yellow star above a blue circle"]


DECODERS = {  # model settings of each decoder the project has
    "show_and_tell": {},
    "show_and_tell_initial_state": {"image_as": "initial_state"},
    "attention_previous": {"attention": True, "attention_query": "previous"},
    "attention_current": {"attention": True, "attention_query": "current"},
}
CELLS = ["rnn", "lstm", "peephole", "coupled", "gru"]


def make_model(cell: str = "lstm", num_layers: int = 2, dropout: float = 0.0, decoder: str = "show_and_tell",
               seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    config = Config()
    config.model.embed_size, config.model.hidden_size = 32, 48
    config.model.num_layers, config.model.cell, config.model.dropout = num_layers, cell, dropout
    for name, value in DECODERS[decoder].items():
        setattr(config.model, name, value)
    return Captioner(config.model, Vocabulary.build(CAPTIONS, min_count=1))


def batch(model: Captioner) -> tuple[torch.Tensor, torch.Tensor]:
    """Four images that differ as photos do (a background colour each, noise in the middle), and CAPTIONS.
    Pure noise would not do: global pooling gives every noise image nearly the same feature."""
    colours = torch.tensor([[220, 30, 30], [30, 30, 220], [30, 200, 40], [230, 220, 30]], dtype=torch.uint8)
    images = colours[:, :, None, None].expand(-1, -1, 64, 64).clone()  # (4, 3, 64, 64)
    generator = torch.Generator().manual_seed(1)
    images[:, :, 16:48, 16:48] = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    encoded = [model.vocab.encode(text) for text in CAPTIONS]
    captions = torch.zeros(len(encoded), max(map(len, encoded)), dtype=torch.long)
    for row, ids in enumerate(encoded):
        captions[row, : len(ids)] = torch.tensor(ids)
    return images, captions


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("cell", CELLS)
def test_loss_at_init_is_log_vocabulary(cell, decoder):
    """The model as the default run builds it (configs/shapes.yaml's sizes, the built-in scenes' vocabulary
    and captions), straight from its initialisation, nothing rescaled: near-uniform predictions, loss ≈ ln V.
    rnn and gru have no output gate to keep |h| small at first, so they start a little further off."""
    vocab = shapes_vocabulary()
    captions = caption_batch(vocab, 16, max_length=20)
    tolerance = 0.05 if cell in MEMORY_CELLS else 0.15
    for seed in range(3):
        torch.manual_seed(seed)
        config = shapes_config((f"model.cell={cell}",)).model
        for name, value in DECODERS[decoder].items():
            setattr(config, name, value)
        model = Captioner(config, vocab).eval()
        images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
        with torch.no_grad():
            logits, loss = model(images, captions)
        assert logits.shape[-1] == len(vocab)
        assert abs(loss.item() - math.log(len(vocab))) < tolerance, (seed, loss.item(), math.log(len(vocab)))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("cell", CELLS)
def test_every_parameter_gets_a_gradient(cell, decoder):
    model = make_model(cell, decoder=decoder)
    _, loss = model(*batch(model))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_padding_is_ignored_by_the_loss():
    model = make_model().eval()
    images, captions = batch(model)
    padded = torch.cat([captions, torch.zeros(len(captions), 5, dtype=torch.long)], dim=1)
    assert torch.allclose(model(images, captions)[1], model(images, padded)[1], atol=1e-6)


@pytest.mark.parametrize("decoder", DECODERS)
def test_overfits_one_batch_and_generates_it_back(decoder):
    model = make_model(num_layers=1, decoder=decoder)
    images, captions = batch(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        _, loss = model(images, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    generated = [" ".join(g.words[0]) for g in model.generate(images, replace(model.decoding, beam_size=2))]
    assert generated == CAPTIONS



def test_scheduled_sampling_replaces_a_share_of_input_words_only():
    model = make_model()
    images, captions = batch(model)
    inputs, features = captions[:, :-1], model.encoder(images)
    torch.manual_seed(0)
    mixed = model.mix_in_predictions(features, inputs, 1, 0.5)
    real = inputs != model.vocab.pad_id
    real[:, 0] = False  # <start>
    assert torch.equal(mixed[~real], inputs[~real])  # <start> and padding never change
    changed = (mixed != inputs)[real].float().mean().item()
    assert 0.25 < changed < 0.75, changed  # about half (a guess can equal the true word)
    model.eval()  # generation-time behaviour: the loss is plain teacher forcing again
    plain = model(images, captions)[1]
    assert torch.equal(model(images, captions, scheduled_sampling=0.5)[1], plain)
