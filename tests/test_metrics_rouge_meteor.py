"""ROUGE-L (ours, pure Python) and METEOR (the jar pycocoevalcap ships, run with Java) against
pycocoevalcap's own classes on the same tokenized captions; without Java, METEOR is left out with one line."""
from __future__ import annotations

import shutil

import pytest
from test_metrics_bleu import _oracle_corpus

from captioner import evaluation
from captioner.metrics import meteor
from captioner.metrics.report import epoch_line, metric_table
from captioner.metrics.rouge import corpus_rouge_l, longest_common_subsequence, rouge_l


def test_longest_common_subsequence_by_hand():
    assert longest_common_subsequence("a b c d".split(), "a c d b".split()) == 3  # a c d
    assert longest_common_subsequence([], ["a"]) == 0
    assert longest_common_subsequence("x y".split(), "a b".split()) == 0


def test_rouge_l_by_hand():
    # LCS("a red circle", "a big red circle") = 3: P = 3/3, R = 3/4, F = (1 + β²) P R / (R + β² P), β = 1.2
    expected = (1 + 1.44) * 1.0 * 0.75 / (0.75 + 1.44 * 1.0)
    assert rouge_l("a red circle".split(), ["a big red circle".split(), "blue".split()]) == pytest.approx(expected)
    assert rouge_l([], ["a circle".split()]) == 0.0
    assert rouge_l("green".split(), ["a circle".split()]) == 0.0
    with pytest.raises(ValueError, match="2 captions but 1 reference lists"):
        corpus_rouge_l([["a"], ["b"]], [[["a"]]])


def coco_inputs(hypotheses, references):
    """pycocoevalcap's dicts from the same tokenized captions (words joined by spaces)."""
    gts = {index: [" ".join(caption) for caption in captions] for index, captions in enumerate(references)}
    res = {index: [" ".join(hypothesis)] for index, hypothesis in enumerate(hypotheses)}
    return gts, res


@pytest.mark.parametrize("shorten", [False, True], ids=["full_length", "short_hypotheses"])
def test_rouge_l_agrees_with_pycocoevalcap(shorten):
    rouge_module = pytest.importorskip("pycocoevalcap.rouge.rouge")
    hypotheses, references = _oracle_corpus(seed=1, shorten=shorten)
    coco_score, coco_per_image = rouge_module.Rouge().compute_score(*coco_inputs(hypotheses, references))
    assert corpus_rouge_l(hypotheses, references) == pytest.approx(coco_score, abs=1e-12)
    assert [rouge_l(h, r) for h, r in zip(hypotheses, references)] == pytest.approx(list(coco_per_image), abs=1e-12)
    assert 0.3 < coco_score < 0.95  # a realistic corpus: neither trivial nor hopeless


@pytest.mark.skipif(meteor.unavailable_reason() is not None, reason=str(meteor.unavailable_reason()))
def test_meteor_we_report_agrees_with_pycocoevalcap():
    meteor_module = pytest.importorskip("pycocoevalcap.meteor.meteor")
    hypotheses, references = _oracle_corpus(seed=2, shorten=False)
    scorer = meteor_module.Meteor()
    coco_score, _ = scorer.compute_score(*coco_inputs(hypotheses, references))
    ours = evaluation.meteor_metric(hypotheses, references)
    assert ours["meteor"] == pytest.approx(100 * coco_score, abs=1e-9)
    assert 10 < ours["meteor"] < 90
    again = evaluation.meteor_metric(hypotheses[:10], references[:10])  # the kept Java process answers again
    coco_again, _ = scorer.compute_score(*coco_inputs(hypotheses[:10], references[:10]))
    assert again["meteor"] == pytest.approx(100 * coco_again, abs=1e-9)


def test_without_java_meteor_is_left_out_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    evaluation._say_once.cache_clear()
    hypotheses, references = _oracle_corpus(seed=3, shorten=False)
    assert evaluation.meteor_metric(hypotheses, references) == {}
    assert evaluation.meteor_metric(hypotheses, references) == {}
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["METEOR left out: no `java` on PATH (install a Java runtime, e.g. apt-get install "
                     "default-jre-headless)"]
    with pytest.raises(meteor.MeteorError, match="no `java` on PATH"):
        meteor.corpus_meteor(hypotheses, references)
    evaluation._say_once.cache_clear()


def test_without_pycocoevalcap_meteor_is_left_out_with_one_line(monkeypatch, capsys):
    """pycocoevalcap is the optional `meteor` extra (its jars are GPL/LGPL): without it, the same one line."""
    find_spec = meteor.importlib.util.find_spec
    monkeypatch.setattr(meteor.importlib.util, "find_spec",
                        lambda name, *args: None if name == "pycocoevalcap" else find_spec(name, *args))
    evaluation._say_once.cache_clear()
    hypotheses, references = _oracle_corpus(seed=3, shorten=False)
    assert evaluation.meteor_metric(hypotheses, references) == {}
    assert evaluation.meteor_metric(hypotheses, references) == {}
    lines = capsys.readouterr().err.strip().splitlines()
    if shutil.which("java") is not None:  # without Java, that line comes first
        assert lines == ["METEOR left out: no pycocoevalcap, which ships the METEOR 1.5 jar "
                         "(the `meteor` extra: pip install -e '.[meteor]')"]
    assert len(lines) == 1
    evaluation._say_once.cache_clear()


def test_epoch_line_and_table_round_to_what_the_numbers_mean():
    entry = {"epoch": 3, "train_loss": 0.80612345, "bleu4": 66.98765, "cider": 350.7123, "meteor": 40.04,
             "content_accuracy": 40.0, "epoch_seconds": 24.3}
    assert epoch_line(entry, 8, "a small purple circle") == (
        'epoch 3/8  loss 0.806  val BLEU-4 67.0  METEOR 40.0  CIDEr-D 350.7  content 40.0%  24 s  '
        'e.g. "a small purple circle"')
    metrics = {"split": "test", "num_images": 500, "beam_size": 3, "bleu1": 96.4567, "bleu2": 95.0, "bleu3": 92.5,
               "bleu4": 88.123456, "rouge_l": 90.04, "cider": 420.06}
    table = metric_table(metrics).splitlines()
    assert table[0] == "test split, 500 images, beam 3"
    assert [line.split()[0] for line in table[1:]] == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L",
                                                     "CIDEr-D"]
    assert table[1].endswith("96.5") and table[4].endswith("88.1") and "left out (no Java" in table[5]
