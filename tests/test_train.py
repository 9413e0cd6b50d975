"""train.py end to end on a tiny config: checkpoints, metrics.json, resume, evaluation command."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from conftest import REPO

from captioner import load_checkpoint
from captioner.data import load_dataset
from captioner.evaluation import evaluate
from captioner.images import load_image
from captioner.vocab import SPECIAL_TOKENS


def test_train_writes_checkpoints_and_metrics(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["beam_size"] == 2 and metrics["num_images"] == 16
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "content_accuracy"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert 0.0 < metrics["cider"] <= 1000.0  # CIDEr-D x100 (10 per reference-identical caption)
    assert len(metrics["history"]) == 2
    for name in ("best.pt", "last.pt", "config.yaml", "history.jsonl"):
        assert (tiny_run / name).is_file(), name
    raw = torch.load(tiny_run / "last.pt", weights_only=True)
    assert raw["progress"]["epoch"] == 2


def test_console_shows_one_line_per_epoch_and_a_final_table(tiny_run):
    """Readable output: one rounded line per epoch (the full record is history.jsonl), then the test table
    and where best.pt and metrics.json are; the run directory stays the last line."""
    lines = (tiny_run.parent / "stdout.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and not any(line.lstrip().startswith("{") for line in lines)
    for number, line in enumerate(epochs, start=1):
        assert re.fullmatch(rf'epoch {number}/2  loss \d+\.\d{{3}}  val BLEU-4 \d+\.\d( {{2}}METEOR \d+\.\d)?'
                            r'  CIDEr-D \d+\.\d  content \d+\.\d%( {2}\d+ s)?  e\.g\. ".*"', line), line
    history = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines()]
    assert all(key in history[0] for key in ("bleu1", "bleu4", "rouge_l", "cider", "train_loss"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    table = lines[lines.index("test split, 16 images, beam 2") + 1 : -3]
    assert [row.split()[0] for row in table] == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L",
                                                 "CIDEr-D", "content"]
    assert table[3].split()[-1] == f"{metrics['bleu4']:.1f}" and table[5].split()[-1] == f"{metrics['rouge_l']:.1f}"
    assert lines[-3:] == [f"best checkpoint: {tiny_run / 'best.pt'}", f"test metrics:    {tiny_run / 'metrics.json'}",
                          str(tiny_run)]


def test_public_api_captions_pil_images(tiny_run):
    """`load_checkpoint` + `caption` on PIL images gives, word for word, the captions the evaluation
    command wrote for the same files, from the vocabulary, with no special token."""
    model = load_checkpoint(tiny_run / "best.pt")
    records = load_dataset(model.run_config.data, log=lambda message: None)["test"][:4]
    decoding = replace(model.decoding, beam_size=2, max_length=20)
    captions = model.caption([load_image(record.path) for record in records], decoding)
    assert captions == evaluate(model, records, "test", decoding)[1]
    words = [word for caption in captions for word in caption.split()]
    assert words and set(words) <= set(model.vocab.words) - set(SPECIAL_TOKENS)


def run_evaluation(checkpoint: Path, output: Path, *flags: str) -> dict:
    """`python -m captioner.evaluation` on the test split; its --output JSON (metrics and captions)."""
    result = subprocess.run([sys.executable, "-m", "captioner.evaluation", "--checkpoint", str(checkpoint),
                             "--split", "test", *flags, "--output", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(output.read_text())


def test_evaluation_command(tiny_run, tmp_path):
    evaluated = run_evaluation(tiny_run / "best.pt", tmp_path / "eval.json", "--beam-size", "2")["metrics"]
    reported = json.loads((tiny_run / "metrics.json").read_text())
    assert evaluated["bleu4"] == reported["bleu4"]


def test_evaluation_command_can_forbid_repeats(tiny_run, tmp_path):
    """--no-repeat-ngram-size reaches generate() (metrics record the value used; the checkpoint's own by
    default); that beam search then never repeats an n-gram is proven in test_decoding.py."""
    default = run_evaluation(tiny_run / "best.pt", tmp_path / "eval.json")
    assert default["metrics"]["no_repeat_ngram_size"] == 0  # the tiny run's eval.no_repeat_ngram_size
    forbidden = run_evaluation(tiny_run / "best.pt", tmp_path / "eval.json", "--no-repeat-ngram-size", "1")
    assert forbidden["metrics"]["no_repeat_ngram_size"] == 1
    assert all(len(words) == len(set(words)) for words in (e["generated"].split() for e in forbidden["captions"]))


def test_bad_override_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "never"
    result = subprocess.run([sys.executable, "train.py", f"run_dir={run_dir}", "train.epochz=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "train.epochz: unknown key" in result.stderr
    assert not run_dir.exists()
