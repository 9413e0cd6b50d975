"""Teacher forcing on packed captions (no work on padding) gives every decoder the same logits at the real
positions, and the same gradients, as the dense batch; and the one loss is unchanged by it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model import DECODERS, batch, make_model

from captioner.decoders.attention import ATTENTION_QUERIES
from captioner.decoders.show_and_tell import Decoder

B, R, T, V, D, L = 3, 2, 6, 11, 10, 4  # images, captions per image, steps, words, feature size, regions
NAMES = ["show_and_tell first_input", "show_and_tell initial_state", "attention previous", "attention current"]


def _decoder(name: str, cell: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The decoder called `name` and the shape of the features it reads."""
    sizes = dict(vocab_size=V, embed_size=8, hidden_size=12, num_layers=2, cell=cell, dropout=0.2)
    if name.startswith("show_and_tell"):
        return Decoder(feature_dim=D, image_as=name.split()[1], **sizes), (B, D)
    return ATTENTION_QUERIES[name.split()[1]](region_dim=D, num_regions=L, **sizes), (B, L, D)


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # lstm: the fast path; gru: the readable cells
@pytest.mark.parametrize("name", NAMES)
def test_packed_teacher_forcing_equals_the_dense_batch(name, cell):
    torch.manual_seed(0)
    decoder, feature_shape = _decoder(name, cell)
    decoder.eval()  # no dropout: the two runs draw masks of different shapes
    features = torch.randn(feature_shape)
    tokens = torch.randint(0, V, (B * R, T))
    lengths = torch.tensor([6, 2, 4, 6, 1, 3])
    real = torch.arange(T) < lengths.unsqueeze(1)  # (B*R, T)
    weights = torch.randn(B * R, T, V) * real.unsqueeze(-1)  # a loss on the real positions only
    results = []
    for given in (None, lengths):
        decoder.zero_grad()
        logits = decoder(features, tokens, R, given)
        (logits * weights).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters()}))
    (packed, packed_grads), (dense, dense_grads) = results[1], results[0]
    assert torch.allclose(packed[real], dense[real], atol=1e-5), f"{name}: logits at real positions"
    assert torch.count_nonzero(packed[~real]) == 0, f"{name}: positions past a caption's end hold 0"
    for parameter, gradient in dense_grads.items():
        assert torch.allclose(packed_grads[parameter], gradient, atol=1e-5), f"{name}: gradient of {parameter}"


@pytest.mark.parametrize("decoder", DECODERS)
def test_the_one_loss_on_packed_captions_is_the_dense_loss(decoder):
    """Captioner.forward packs its captions by length; its loss and every gradient are those of the
    dense batch, cross-entropy over the real words (the zeros past each end are never read)."""
    model = make_model(decoder=decoder).eval()
    images, captions = batch(model)
    model.zero_grad()
    _, loss = model(images, captions)
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits = model.decoder(model.encoder(images), captions[:, :-1])  # dense: every position computed
    dense = F.cross_entropy(logits.reshape(-1, logits.size(-1)), captions[:, 1:].reshape(-1),
                            ignore_index=model.vocab.pad_id)
    dense.backward()
    assert torch.allclose(loss, dense, atol=1e-6), f"{decoder}: loss"
    assert (captions[:, 1:] == model.vocab.pad_id).any(), "the batch must hold captions of several lengths"
    for name, gradient in packed_grads.items():
        assert torch.allclose(gradient, model.get_parameter(name).grad, atol=1e-5), f"{decoder}: {name}"
