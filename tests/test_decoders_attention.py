"""The attention decoders: decoding step by step is teacher forcing, and regions know where they are."""
from __future__ import annotations

import pytest
import torch

from captioner.config import Config
from captioner.decoders.attention import ATTENTION_QUERIES, RegionProjection
from captioner.model import Captioner
from captioner.vocab import Vocabulary

V, D, L, B, T = 11, 6, 16, 3, 5


def make_decoder(query: str, num_regions: int = L, num_layers: int = 2):
    torch.manual_seed(0)
    return ATTENTION_QUERIES[query](region_dim=D, vocab_size=V, embed_size=8, hidden_size=10, num_layers=num_layers,
                                    cell="lstm", dropout=0.0, attention_size=7, num_regions=num_regions).eval()


@pytest.mark.parametrize("query", sorted(ATTENTION_QUERIES))
def test_step_by_step_decoding_equals_teacher_forcing(query):
    decoder = make_decoder(query)
    features, tokens = torch.randn(B, L, D), torch.randint(0, V, (B, T))
    with torch.no_grad():
        forced = torch.log_softmax(decoder(features, tokens), dim=-1)  # (B, T, V)
        state, stepped = decoder.start(features), []
        for t in range(T):
            log_probs, state = decoder.step(tokens[:, t], state)
            stepped.append(log_probs)
    assert torch.allclose(forced, torch.stack(stepped, dim=1), atol=1e-5)


@pytest.mark.parametrize("query", sorted(ATTENTION_QUERIES))
def test_without_positions_shuffling_the_regions_changes_nothing_and_with_them_it_does(query):
    # A weighted sum over regions is blind to their order, so "left of" cannot be told from "right of"
    # unless each region carries its place: that is what the position embeddings are for.
    features, tokens = torch.randn(B, L, D), torch.randint(0, V, (B, T))
    mirrored = features.view(B, 4, 4, D).flip(2).reshape(B, L, D)  # the image flipped left-right
    for num_regions, blind in ((0, True), (L, False)):
        decoder = make_decoder(query, num_regions)
        with torch.no_grad():
            logits, flipped = decoder(features, tokens), decoder(mirrored, tokens)
        change = ((logits - flipped).abs().max() / logits.abs().max()).item()  # relative to the logits' scale
        assert change < 1e-6 if blind else change > 1e-5, change  # float32 rounding is ~1e-7


def test_a_map_of_another_size_is_a_clear_error():
    projection = RegionProjection(D, 8, num_regions=L)
    with pytest.raises(ValueError, match="encoder gave 49 regions, the decoder was built for 16"):
        projection(torch.randn(B, 49, D))


def test_the_captioner_sizes_the_positions_from_its_encoder_without_moving_batchnorm():
    config = Config()
    config.model.attention = True
    config.model.embed_size, config.model.hidden_size = 16, 24
    torch.manual_seed(0)
    model = Captioner(config.model, Vocabulary.build(["a red circle"], min_count=1))
    assert model.decoder.region_projection.position.shape == (16, 16)  # the small CNN's 4x4 map, E = 16
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.num_batches_tracked == 0 and bool((m.running_var == 1).all()) for m in norms)  # eval-mode probe
    assert model.encoder.training  # and the mode came back
    config.model.region_positions = False
    assert Captioner(config.model, model.vocab).decoder.region_projection.position is None
