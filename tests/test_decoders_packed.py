"""Teacher forcing on packed captions (no work on padding) gives every decoder the same logits at the real
positions, and the same gradients, as the dense batch; and the one loss is unchanged by it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def test_the_loss_ignores_what_packing_leaves_out():
    """Cross-entropy with ignore_index=<pad> reads only the real positions, so the zeros there are unseen."""
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 5, V), torch.randint(1, V, (4, 5))
    targets[1, 3:] = targets[3, 1:] = 0  # 0 = <pad>
    padded_out = logits.clone()
    padded_out[targets == 0] = 0.0
    loss = [F.cross_entropy(x.reshape(-1, V), targets.reshape(-1), ignore_index=0) for x in (logits, padded_out)]
    assert torch.equal(loss[0], loss[1])
