"""Self-critical training: CIDEr-D against coco-caption, the REINFORCE loss with its leave-one-out
baseline against a per-sample computation, and a run whose reward rises on the shapes data."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from captioner.config import EvalConfig
from captioner.decoding import Generation
from captioner.metrics.cider import CiderD
from captioner.training.self_critical import SelfCriticalLoss, sampled_tokens
from captioner.vocab import tokenize

CORPUS = {
    1: ["a black dog runs across the grass", "a dog is running on a lawn", "the black dog runs"],
    2: ["two children play in the snow", "kids playing in snow", "two kids are playing outside in the snow"],
    3: ["a man rides a bike down a hill", "a cyclist rides down a dirt hill", "a man on a bike"],
    4: ["a dog jumps into the water", "a brown dog jumping into a lake", "a dog leaps into water"],
}
CANDIDATES = {1: "a black dog runs on the grass", 2: "two kids play in the snow snow snow",
              3: "a man", 4: "a dog jumps into the water and a dog jumps into the water again"}


def test_cider_d_matches_coco_caption():
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    mean, per_image = cider_module.Cider().compute_score({k: v for k, v in CORPUS.items()},
                                                         {k: [CANDIDATES[k]] for k in CORPUS})
    references = [[tokenize(c) for c in CORPUS[k]] for k in CORPUS]
    ours = CiderD(references)
    scores = [ours.score(tokenize(CANDIDATES[k]), refs) for k, refs in zip(CORPUS, references)]
    assert scores == pytest.approx(list(per_image), rel=1e-9)
    assert ours.corpus_score([tokenize(CANDIDATES[k]) for k in CORPUS], references) == pytest.approx(mean)
    assert len(set(round(s, 6) for s in scores)) == 4 and max(scores) > 1.0  # the cases differ


def test_cider_d_prefers_the_consensus_and_punishes_repeats_and_length():
    references = [[tokenize(c) for c in captions] for captions in CORPUS.values()]
    cider = CiderD(references)
    dogs = references[0]
    assert cider.score(tokenize("the black dog runs across the grass"), dogs) > cider.score(tokenize("a dog"), dogs)
    assert cider.score(tokenize("a black dog runs"), dogs) > cider.score(tokenize("a black dog runs dog runs dog runs"), dogs)
    assert cider.score(tokenize("two kids play in the snow"), dogs) < 0.2  # another image's caption
    assert cider.score([], dogs) == 0.0
    with pytest.raises(ValueError, match="empty"):
        CiderD([])


def generations_of(rows: list[list[int]], finished: list[bool], words: list[list[str]], K: int) -> list[Generation]:
    """Images of K samples each, as Captioner.generate(num_samples=K) returns them."""
    return [Generation(rows[b : b + K], [0.0] * K, finished[b : b + K], words[b : b + K]) for b in range(0, len(rows), K)]


def test_sampled_tokens_frame_each_caption_image_by_image():
    generations = generations_of([[5, 6], [7], [8, 9, 10], [11]], [True, True, False, True], [[]] * 4, K=2)
    tokens = sampled_tokens(generations, start_id=1, end_id=2, pad_id=0)
    assert tokens.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0], [1, 8, 9, 10], [1, 11, 2, 0]]  # cut off: no <end>


class FakeModel:
    """Returns fixed samples; stands in for Captioner.generate so the loss can be checked by hand."""

    def __init__(self, rows, words, vocab):
        self.rows, self.words, self.vocab = rows, words, vocab
        self.decoding = replace(EvalConfig().decoding(), max_length=9)  # the run's own, kept by the samples

    def generate(self, features, decoding):
        assert decoding == replace(self.decoding, temperature=1.0, num_samples=decoding.num_samples, seed=decoding.seed)
        assert features.size(0) * decoding.num_samples == len(self.rows)
        return generations_of(self.rows, [True] * len(self.rows), self.words, decoding.num_samples)


def test_loss_is_reinforce_with_the_mean_of_the_other_samples_as_baseline(tmp_path):
    from captioner.data.records import ImageRecord
    from captioner.vocab import Vocabulary

    records = [ImageRecord(str(k), str(tmp_path / f"{k}.jpg"), tuple(v), "train") for k, v in CORPUS.items()]
    vocab = Vocabulary.build((c for r in records for c in r.captions), min_count=1)
    samples = ["a black dog runs", "a dog", "two kids play in the snow", "kids in snow", "kids", "a man"]
    words = [tokenize(s) for s in samples]
    rows = [vocab.encode(s)[1:-1] for s in samples]  # without <start>/<end>
    loss_fn = SelfCriticalLoss(records, samples=3)
    torch.manual_seed(0)
    logits = torch.randn(6, 8, len(vocab), requires_grad=True)

    def forward(images, tokens, features, captions_per_image):
        assert images is None and captions_per_image == 3 and tokens.size(0) == 6
        return logits[:, : tokens.size(1) - 1], torch.tensor(0.0)

    loss, mean_reward = loss_fn(FakeModel(rows, words, vocab), forward, torch.zeros(2, 1), indices=[0, 1], seed=0)
    rewards = [loss_fn.cider.score(w, loss_fn.references[i // 3]) for i, w in enumerate(words)]
    expected, count = 0.0, 0
    for i, sample in enumerate(rows):
        siblings = [rewards[j] for j in range(i // 3 * 3, i // 3 * 3 + 3) if j != i]
        advantage = rewards[i] - sum(siblings) / 2
        targets = [*sample, vocab.end_id]
        log_probs = torch.log_softmax(logits[i], dim=-1)
        expected -= advantage * sum(log_probs[t, w] for t, w in enumerate(targets))
        count += len(targets)
    assert mean_reward == pytest.approx(sum(rewards) / 6)
    assert loss.item() == pytest.approx((expected / count).item(), rel=1e-5)
    assert rewards[0] > rewards[2] and rewards[3] > rewards[5]  # the test has real advantages of both signs


def test_self_critical_epochs_start_from_the_best_checkpoint_at_a_constant_rate(tmp_path):
    from conftest import REPO, tiny_overrides

    from captioner.config import load_config
    from captioner.training import trainer as training_loop

    config = load_config(REPO / "configs/shapes.yaml", [*tiny_overrides(tmp_path / "data", tmp_path / "run"),
                                                         "train.epochs=1", "train.self_critical_epochs=2",
                                                         "train.self_critical_learning_rate=3e-4"])
    log, rates = [], []
    trainer = training_loop.Trainer(config, log=log.append)
    original_start = trainer.start_self_critical_epoch

    def start(dataset):
        if not rates:  # the switch: best.pt must replace whatever the weights are now
            best_weights = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
            trainer.model.decoder.output.bias.data.add_(1.0)
        original_start(dataset)
        assert not trainer.model.training  # sampling and scoring see the same network (no dropout)
        if not rates:
            assert all(torch.equal(v, best_weights[k]) for k, v in trainer.model.state_dict().items())
        rates.append(trainer.optimizer.param_groups[0]["lr"])

    trainer.start_self_critical_epoch = start
    metrics = trainer.fit()
    assert rates == [3e-4, 3e-4] and any("self-critical training from best.pt" in line for line in log)
    history = metrics["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert "train_reward" not in history[0] and all(0.0 <= entry["train_reward"] for entry in history[1:])
    assert trainer.optimizer.param_groups[0]["lr"] == 3e-4  # the cosine schedule did not move it


@pytest.mark.parametrize("override, message", [
    ("train.self_critical_reward=meteor", "train.self_critical_reward='meteor': expected one of cider, bleu4"),
    ("train.self_critical_samples=1", "train.self_critical_samples=1: expected a value in [2, inf)"),
    ("train.self_critical_epochs=-1", "train.self_critical_epochs=-1: expected a value in [0, inf)"),
    ("train.self_critical_learning_rate=0", "train.self_critical_learning_rate=0.0: expected a value in (0, inf)"),
])
def test_bad_self_critical_settings_fail_before_any_training(tmp_path, capsys, override, message):
    from conftest import REPO, tiny_overrides

    import train

    extra = [] if "epochs" in override else ["train.self_critical_epochs=1"]
    code = train.main(["--config", str(REPO / "configs/shapes.yaml"), *tiny_overrides(tmp_path / "data", tmp_path / "run"),
                       *extra, override])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nothing made, nothing trained
