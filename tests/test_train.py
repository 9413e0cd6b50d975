"""train.py end to end on a tiny config: checkpoints, metrics.json, resume, evaluation command."""
from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import torch

from captioner import load_checkpoint
from conftest import REPO


def test_train_writes_checkpoints_and_metrics(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["beam_size"] == 2 and metrics["num_images"] == 16
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "content_accuracy"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert 0.0 < metrics["cider"] <= 1000.0  # CIDEr-D x100 (10 per reference-identical caption)
    assert len(metrics["history"]) == 2
    for name in ("best.pt", "last.pt", "config.yaml", "history.jsonl"):
        assert (tiny_run / name).is_file(), name
    raw = torch.load(tiny_run / "last.pt", weights_only=True)
    assert raw["progress"]["epoch"] == 2


def test_public_api_captions_pil_images(tiny_run):
    from PIL import Image

    model = load_checkpoint(tiny_run / "best.pt")
    captions = model.caption([Image.new("RGB", (64, 64), "white"), Image.new("RGB", (90, 40), "red")], beam_size=3)
    assert len(captions) == 2 and all(isinstance(text, str) for text in captions)


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
    def captions(*flags: str) -> list[list[str]]:
        output = run_evaluation(tiny_run / "best.pt", tmp_path / "eval.json", *flags)
        return [entry["generated"].split() for entry in output["captions"]]

    assert any(len(words) > len(set(words)) for words in captions())  # "a ... and a ...": words repeat
    assert all(len(words) == len(set(words)) for words in captions("--no-repeat-ngram-size", "1"))


def test_bad_override_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "never"
    result = subprocess.run([sys.executable, "train.py", f"run_dir={run_dir}", "train.epochz=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "train.epochz: unknown key" in result.stderr
    assert not run_dir.exists()
