"""The image–sentence scorer (captioner/scorer/model.py) and its trainer (captioner/scorer/training.py): the VSE++ ranking
loss and R@K on hand-made similarity matrices, sentence encoding without padding effects, a tiny training run
that beats chance, reranking a beam's alternatives (directly and through Captioner.generate), the checkpoint
round trip, the config, and train.py's `task: scorer` entry end to end."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import REPO

from captioner.checkpoint import CheckpointError, save_checkpoint
from captioner.config import ConfigError, load_config
from captioner.decoding import Generation
from captioner.metrics.retrieval import recall_at_k
from captioner.model import Captioner
from captioner.scorer.model import ImageSentenceScorer, ScorerSettings, load_scorer, ranking_loss, scorer_payload
from captioner.scorer.rerank import rerank_generations
from captioner.scorer.training import (
    ScorerTrainConfig,
    fit,
    is_scorer_config,
    load_scorer_config,
    retrieval_metrics,
    train_epoch,
)
from captioner.vocab import Vocabulary

COLOURS, SHAPES = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _scorer(feature_dim=6, pooling="mean", cell="lstm", words=COLOURS + SHAPES + ("a",)):
    settings = ScorerSettings(feature_dim, embed_size=8, hidden_size=8, cell=cell, joint_size=8, pooling=pooling)
    return ImageSentenceScorer(Vocabulary(words), settings)


# --- the ranking loss -------------------------------------------------------------------------------------------

def test_loss_is_zero_when_every_positive_beats_its_negatives_by_the_margin():
    similarity = torch.tensor([[0.9, 0.5, 0.1],
                               [0.2, 0.8, 0.4],
                               [0.0, 0.4, 0.7]])  # every off-diagonal entry is >= 0.3 below its row's and column's pair
    assert ranking_loss(similarity, margin=0.2).item() == 0.0
    assert ranking_loss(similarity, margin=0.2, hardest=False).item() == 0.0


def test_loss_counts_the_hardest_violations_in_both_directions():
    similarity = torch.tensor([[0.5, 0.6, 0.1],    # image 0: sentence 1 scores above its own sentence 0
                               [0.2, 0.8, 0.3],
                               [0.0, 0.75, 0.7]])  # sentence 1: image 2 comes within the margin of image 1
    margin = 0.2
    # rows, max_l [m − S_kk + S_kl]_+ : row 0: 0.2 − 0.5 + 0.6 = 0.3; row 1: 0; row 2: 0.2 − 0.7 + 0.75 = 0.25
    # columns, max_k [m − S_ll + S_kl]_+ : column 0: 0; column 1: max(0.2 − 0.8 + 0.6, 0.2 − 0.8 + 0.75) = 0.15;
    # column 2: 0
    expected = (0.3 + 0.0 + 0.25) / 3 + (0.0 + 0.15 + 0.0) / 3
    assert ranking_loss(similarity, margin).item() == pytest.approx(expected, abs=1e-6)
    # image 0 for sentence 1 (0.2 − 0.8 + 0.7 = 0.1) is a second violation in column 1: the sum counts it,
    # the hardest negative (0.15) does not; row 0 becomes 0.2 − 0.5 + 0.7 = 0.4
    similarity[0, 1] = 0.7
    expected_sum = (0.4 + 0.0 + 0.25) / 3 + (0.0 + 0.1 + 0.15 + 0.0) / 3
    assert ranking_loss(similarity, margin).item() == pytest.approx((0.4 + 0.25) / 3 + 0.15 / 3, abs=1e-6)
    assert ranking_loss(similarity, margin, hardest=False).item() == pytest.approx(expected_sum, abs=1e-6)


def test_pairs_marked_also_positive_are_not_negatives():
    similarity = torch.tensor([[0.9, 0.9], [0.9, 0.9]])  # two images with the same caption
    assert ranking_loss(similarity, 0.2).item() == pytest.approx(0.4)
    same = torch.tensor([[True, True], [True, True]])
    assert ranking_loss(similarity, 0.2, also_positive=same).item() == 0.0


def test_loss_refuses_a_non_square_matrix():
    with pytest.raises(ValueError, match=r"similarity must be square \(B, B\), got \(2, 3\)"):
        ranking_loss(torch.zeros(2, 3))


# --- retrieval metrics -------------------------------------------------------------------------------------------

def test_recall_at_k_on_a_hand_made_matrix():
    # 3 images, 6 sentences: sentences 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2
    similarity = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.2, 0.3],   # image 0: its sentence 0 ranks 1st
                               [0.7, 0.6, 0.5, 0.4, 0.3, 0.2],   # image 1: best own (0.5) ranks 3rd
                               [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # image 2: own sentence 5 ranks 1st
    sentence_image = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = recall_at_k(similarity, sentence_image, ks=(1, 2, 3))
    assert metrics["i2t_r1"] == pytest.approx(200 / 3) and metrics["i2t_r2"] == pytest.approx(200 / 3)
    assert metrics["i2t_r3"] == pytest.approx(100.0)
    # text→image ranks: s0 1st, s1 3rd (0.6 and 0.2 > 0.1), s2 2nd (0.8 > 0.5), s3 1st (the tie at 0.4 counts for
    # the match), s4 1st, s5 1st
    assert metrics["t2i_r1"] == pytest.approx(400 / 6) and metrics["t2i_r2"] == pytest.approx(500 / 6)
    assert metrics["t2i_r3"] == pytest.approx(100.0)
    assert metrics["t2i_r1_chance"] == pytest.approx(100 / 3) and metrics["t2i_r3_chance"] == pytest.approx(100.0)
    # i2t chance: 2 own among 6 sentences; top 1: 2/6; top 2: 1 − C(4,2)/C(6,2) = 1 − 6/15
    assert metrics["i2t_r1_chance"] == pytest.approx(100 * 2 / 6) and metrics["i2t_r2_chance"] == pytest.approx(60.0)


def test_recall_at_k_refuses_bad_sentence_images():
    with pytest.raises(ValueError, match=r"sentence_image must be \(3,\) image indices in \[0, 2\)"):
        recall_at_k(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


# --- the model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "final"])
def test_a_sentence_scores_the_same_whatever_it_is_batched_with(pooling):
    scorer = _scorer(pooling=pooling).eval()
    sentence = scorer.encode_words(["a", "red", "circle"])
    alone = scorer.embed_sentences([sentence])
    with_others = scorer.embed_sentences([scorer.encode_words(["a"] * 7), sentence, scorer.encode_words(["blue"])])
    assert torch.allclose(alone[0], with_others[1], atol=1e-6)
    assert torch.allclose(with_others.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_every_parameter_gets_a_gradient_and_scores_are_cosines():
    scorer = _scorer(pooling="final")
    features = torch.randn(3, 6)
    sentences = [scorer.encode_words(words) for words in (["a", "red"], ["blue", "square", "a"], ["green"])]
    similarity = scorer(features, sentences)  # (3, 3)
    assert similarity.shape == (3, 3) and similarity.abs().max() <= 1 + 1e-6
    assert torch.allclose(scorer.score(features, sentences), similarity.diagonal(), atol=1e-6)
    ranking_loss(similarity, margin=1.0).backward()
    for name, parameter in scorer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name} got no gradient"


def test_region_features_are_averaged_and_a_wrong_size_is_a_clear_error():
    scorer = _scorer()
    regions = torch.randn(2, 5, 6)  # (N, R, F) from an attention captioner's encoder
    assert torch.allclose(scorer.embed_images(regions), scorer.embed_images(regions.mean(dim=1)))
    with pytest.raises(ValueError, match=r"image features must be \(N, 6\) or \(N, R, 6\)"):
        scorer.embed_images(torch.randn(2, 5))


def _toy_split(count: int, seed: int):
    """Images whose 7-d feature encodes a colour and a shape (plus noise); captions name both."""
    chooser = random.Random(seed)
    features, captions = [], []
    for _ in range(count):
        colour, shape = chooser.randrange(len(COLOURS)), chooser.randrange(len(SHAPES))
        feature = torch.randn(7) * 0.1
        feature[colour] += 1.0
        feature[len(COLOURS) + shape] += 1.0
        features.append(feature)
        captions.append([["a", COLOURS[colour], SHAPES[shape]], [COLOURS[colour], SHAPES[shape]]])
    return torch.stack(features), captions


def test_a_tiny_training_run_beats_chance():
    torch.set_num_threads(1)
    scorer = _scorer(feature_dim=7)
    encode = lambda captions: [[scorer.encode_words(words) for words in image] for image in captions]  # noqa: E731
    train_features, train_captions = _toy_split(96, seed=1)
    test_features, test_captions = _toy_split(24, seed=2)
    before = retrieval_metrics(scorer, test_features, encode(test_captions))
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.01)
    config = ScorerTrainConfig(batch_size=32, margin=0.2)
    chooser = random.Random(0)
    for epoch in range(25):
        hardest = epoch > 0  # one warm-up epoch over all negatives, as fit() does
        loss = train_epoch(scorer, optimizer, train_features, encode(train_captions), config, chooser, hardest)
    after = retrieval_metrics(scorer, test_features, encode(test_captions))
    # 12 colour–shape kinds among 24 images: a perfect text→image R@1 is ~50% (two images per kind tie), chance ~4%
    assert after["t2i_r1"] > 3 * after["t2i_r1_chance"], (before, after, loss)
    assert after["t2i_r5"] > before["t2i_r5"] and after["i2t_r1"] > 3 * after["i2t_r1_chance"]


# --- reranking ---------------------------------------------------------------------------------------------------

class _FixedScores(ImageSentenceScorer):
    """A scorer whose score of a sentence is looked up by its words, for exact reranking arithmetic."""

    def __init__(self, table: dict[tuple[str, ...], float]) -> None:
        super().__init__(Vocabulary(COLOURS + SHAPES + ("a",)), ScorerSettings(4, 4, 4, joint_size=4))
        self.table = table

    def score(self, features, sentences):
        words = [tuple(self.vocab.decode_tokens(sentence)) for sentence in sentences]
        return torch.tensor([self.table[key] for key in words])


def _generation(alternatives, log_probs, finished=None):
    token_ids = [[4 + index] * len(words) for index, words in enumerate(alternatives)]  # placeholders
    return Generation(token_ids, list(log_probs), list(finished or [True] * len(alternatives)),
                      [list(words) for words in alternatives])


def test_rerank_orders_by_log_p_plus_weight_times_score():
    alternatives = (("red",), ("blue",), ("green",))
    scorer = _FixedScores({("red",): 0.0, ("blue",): 0.9, ("green",): 1.5})
    generation = _generation(alternatives, [-1.0, -2.0, -3.0])
    features = torch.zeros(1, 4)
    def tops(weight):
        return [words[0] for words in rerank_generations([generation], features, scorer, weight)[0].words]

    assert tops(0.0) == ["red", "blue", "green"]  # log p alone: the beam's order
    assert tops(1.0) == ["red", "blue", "green"]  # −1.0, −1.1, −1.5
    assert tops(2.0) == ["green", "blue", "red"]  # −1.0, −0.2, 0.0
    reranked = rerank_generations([generation], features, scorer, 2.0)[0]
    assert reranked.log_probs == [-3.0, -2.0, -1.0] and reranked.token_ids == [[6], [5], [4]]


def test_rerank_keeps_finished_alternatives_first_and_applies_the_length_penalty():
    scorer = _FixedScores({("red",): 0.0, ("blue", "a", "a"): 0.0, ("green",): 5.0})
    generation = _generation((("red",), ("blue", "a", "a"), ("green",)), [-2.0, -3.0, -0.1], [True, True, False])
    reranked = rerank_generations([generation], torch.zeros(1, 4), scorer, 1.0)[0]
    assert [words[0] for words in reranked.words] == ["red", "blue", "green"]
    assert reranked.finished == [True, True, False]
    # α = 1: −2/2 = −1.0 against −3/4 = −0.75: the longer caption wins
    with_penalty = rerank_generations([generation], torch.zeros(1, 4), scorer, 1.0, length_penalty=1.0)[0]
    assert with_penalty.words[0] == ["blue", "a", "a"]


def test_rerank_reorders_the_beams_that_generate_returns():
    config = load_config(None, ["model.embed_size=8", "model.hidden_size=8", "model.dropout=0.0"])
    vocab = Vocabulary(COLOURS + SHAPES + ("a",))
    model = Captioner(config.model, vocab).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    scorer = ImageSentenceScorer(vocab, ScorerSettings(model.encoder.feature_dim, 8, 8, joint_size=8)).train()
    plain = model.generate(images, replace(model.decoding, beam_size=4, max_length=5,
                                           no_repeat_content_words=False))  # the beams as before
    reranked = rerank_generations(plain, model.encoder(images), scorer, 50.0)
    assert scorer.training, "reranking scores in eval mode and gives the scorer its own mode back"
    assert any(g.words != p.words for g, p in zip(reranked, plain)), "a large weight should reorder some beam"
    assert [sorted(map(tuple, g.words)) for g in reranked] == [sorted(map(tuple, p.words)) for p in plain]
    assert rerank_generations(plain, model.encoder(images), scorer, 0.0)[0].words == plain[0].words
    assert not hasattr(model, "scorer"), "the captioner never holds a scorer"


# --- checkpoint and config -----------------------------------------------------------------------------------

def test_scorer_checkpoint_round_trip(tmp_path):
    scorer = _scorer().eval()
    save_checkpoint(scorer_payload(scorer, {"task": "scorer"}, {"rsum": 1.0}), tmp_path / "scorer.pt")
    loaded = load_scorer(tmp_path / "scorer.pt")
    features, sentences = torch.randn(2, 6), [scorer.encode_words(["a", "red"]), scorer.encode_words(["blue"])]
    assert torch.equal(loaded(features, sentences), scorer(features, sentences))
    assert loaded.vocab == scorer.vocab and loaded.metrics == {"rsum": 1.0}
    save_checkpoint({"model": {}, "config": {}}, tmp_path / "captioner.pt")
    with pytest.raises(CheckpointError, match="not an image–sentence scorer checkpoint"):
        load_scorer(tmp_path / "captioner.pt")


def test_scorer_config_loads_and_refuses_unknown_keys(tmp_path):
    config = load_scorer_config(REPO / "configs/scorer.yaml", ["train.epochs=2", "scorer.cell=gru"])
    assert config.task == "scorer" and config.train.epochs == 2 and config.scorer.cell == "gru"
    assert is_scorer_config(REPO / "configs/scorer.yaml") and not is_scorer_config(REPO / "configs/shapes.yaml")
    with pytest.raises(ConfigError, match="scorer.hidden: unknown key"):
        load_scorer_config(REPO / "configs/scorer.yaml", ["scorer.hidden=3"])
    with pytest.raises(ConfigError, match="task: expected 'scorer'"):
        load_scorer_config(REPO / "configs/scorer.yaml", ["task=caption"])
    with pytest.raises(ConfigError, match="eval.split='dev': expected one of train, val, test"):
        load_scorer_config(REPO / "configs/scorer.yaml", ["eval.split=dev"])


def test_train_py_trains_a_scorer_end_to_end(tiny_run, tmp_path):
    """train.py --config configs/scorer.yaml on the tiny captioner: retrieval and rerank BLEU are written."""
    captioner_config = load_config(tiny_run / "config.yaml")
    data = captioner_config.data
    run_dir = tmp_path / "scorer"
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/scorer.yaml"),
               f"run_dir={run_dir}", f"data.root={data.root}", f"scorer.captioner_checkpoint={tiny_run / 'best.pt'}",
               *(f"data.synthetic.{key}={getattr(data.synthetic, key)}"  # the same data: none regenerated
                 for key in ("num_train", "num_val", "num_test", "image_size", "seed")),
               "scorer.hidden_size=16", "scorer.embed_size=16", "scorer.joint_size=16", "train.epochs=2",
               "train.batch_size=16", "train.threads=1", "eval.beam_size=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    metrics = json.loads((run_dir / "scorer_metrics.json").read_text())
    retrieval = metrics["retrieval"]
    assert retrieval["t2i_r1_chance"] == pytest.approx(100 / retrieval["num_images"])
    assert set(metrics["rerank"]["beam"]) == {"bleu1", "bleu2", "bleu3", "bleu4"} == set(metrics["rerank"]["reranked"])
    assert metrics["rerank"]["tuned_on"]["split"] == "val"
    assert all(math.isfinite(value) for value in metrics["rerank"]["sweep_bleu4"].values())
    assert load_scorer(run_dir / "scorer.pt").settings.hidden_size == 16


def test_scorer_without_a_captioner_trains_on_its_own_backbone(tiny_run, tmp_path):
    """scorer.captioner_checkpoint="" (the config's documented alternative): the encoder is built from
    scorer.backbone and the vocabulary from the data; retrieval is measured, there is nothing to rerank."""
    data = load_config(tiny_run / "config.yaml").data
    run_dir = tmp_path / "scorer-alone"
    config = load_scorer_config(REPO / "configs/scorer.yaml", [
        f"run_dir={run_dir}", f"data.root={data.root}", "scorer.captioner_checkpoint=",
        *(f"data.synthetic.{key}={getattr(data.synthetic, key)}"
          for key in ("num_train", "num_val", "num_test", "image_size", "seed")),
        "data.feature_cache=false", "scorer.backbone=small_cnn",
        "scorer.hidden_size=8", "scorer.embed_size=8", "scorer.joint_size=8", "train.epochs=1", "train.threads=1"])
    assert config.scorer.captioner_checkpoint == ""
    metrics = fit(config, log=lambda message: None)
    assert "rerank" not in metrics and metrics["retrieval"]["num_images"] > 0
    assert load_scorer(run_dir / "scorer.pt").settings.feature_dim > 0
