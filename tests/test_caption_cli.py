"""`python -m captioner.caption` through its real entry point: a folder that mixes good and broken files,
globs, the three output formats, attention-map PNGs, and the exit status."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from captioner import load_checkpoint
from captioner.caption import find_images
from captioner.checkpoint import save_checkpoint
from captioner.config import to_dict
from captioner.images import load_image
from captioner.model import Captioner

EXAMPLES = sorted((REPO / "examples" / "images").glob("shapes_*.jpg"))


def run_caption(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.caption", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Two good scenes at the top, one in a subfolder, and three broken files with image names."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    shutil.copy(EXAMPLES[0], folder / "good_1.jpg")
    Image.open(EXAMPLES[1]).save(folder / "good_2.png")
    shutil.copy(EXAMPLES[2], folder / "more" / "good_3.jpg")
    (folder / "not_an_image.jpg").write_text("hello, I am text")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(EXAMPLES[0].read_bytes()[:300])
    (folder / "notes.txt").write_text("not looked at: a folder search keeps image suffixes only")
    return folder


def test_mixed_folder_captions_the_good_names_the_bad_and_exits_1(tiny_run, mixed_folder):
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--beam-size", "2", str(mixed_folder))
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    good = sorted(str(path) for path in mixed_folder.rglob("good_*"))
    assert sorted(line.split("\t")[0] for line in lines) == good
    model = load_checkpoint(tiny_run / "best.pt")
    expected = model.caption([load_image(path) for path in good], replace(model.decoding, beam_size=2))  # the same generate(), same loader
    assert dict(line.split("\t") for line in lines) == dict(zip(good, expected))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    for name in ("not_an_image.jpg", "empty.png", "truncated.jpg"):
        assert sum(name in line for line in errors) == 1, errors
    assert "Traceback" not in result.stderr and "notes.txt" not in result.stdout + result.stderr


def test_globs_jsonl_with_alternatives_and_exit_0(tiny_run, mixed_folder):
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--format", "jsonl", "--beam-size", "3",
                         "--batch-size", "1", str(mixed_folder / "good_*"), str(mixed_folder / "**" / "good_3.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(record["file"]).name for record in records] == ["good_1.jpg", "good_2.png", "good_3.jpg"]
    for record in records:
        alternatives = record["alternatives"]
        assert len(alternatives) == 3 and alternatives[0]["caption"] == record["caption"]
        scores = [alternative["log_prob"] for alternative in alternatives]
        assert scores[0] == record["log_prob"] < 0 and all(score <= 0 for score in scores)


def test_csv_sampling_and_attention_maps(tiny_run, mixed_folder, tmp_path):
    maps = tmp_path / "maps"
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--format", "csv", "--temperature", "0.7",
                         "--seed", "1", "--attention-maps", str(maps), str(mixed_folder / "good_1.jpg"),
                         str(mixed_folder / "more"), str(mixed_folder / "missing.jpg"))
    assert result.returncode == 1  # missing.jpg: named on stderr, the others captioned
    assert result.stderr.strip().splitlines() == [f"error: {mixed_folder / 'missing.jpg'}: no such file or folder"]
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["file", "caption", "log_prob"] and len(rows) == 3
    assert sorted(path.name for path in maps.iterdir()) == ["good_1.png", "good_3.png"]
    for path in maps.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300


def test_refusals_exit_2(tiny_run, tmp_path):
    result = run_caption("--checkpoint", str(tmp_path / "none.pt"), str(EXAMPLES[0]))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "none.pt" in result.stderr
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--beam-size", "0", str(EXAMPLES[0]))
    assert result.returncode == 2 and "--beam-size" in result.stderr
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--device", "gpu0", str(EXAMPLES[0]))
    assert result.returncode == 2 and "--device 'gpu0': expected cpu, cuda or cuda:N" in result.stderr


def test_attention_maps_of_a_model_without_attention_are_refused_with_a_sentence(tiny_run, tmp_path):
    config = load_checkpoint(tiny_run / "best.pt").run_config
    config.model.attention = False  # Show and Tell: one image vector, no weights to draw
    model = Captioner(config.model, load_checkpoint(tiny_run / "best.pt").vocab)
    save_checkpoint({"config": to_dict(config), "vocab": model.vocab.to_dict(), "model": model.state_dict()},
                    tmp_path / "plain.pt")
    result = run_caption("--checkpoint", str(tmp_path / "plain.pt"), "--attention-maps", str(tmp_path / "maps"),
                         str(EXAMPLES[0]))
    assert result.returncode == 2 and "has no attention" in result.stderr and not (tmp_path / "maps").exists()
    assert run_caption("--checkpoint", str(tmp_path / "plain.pt"), str(EXAMPLES[0])).returncode == 0


def test_find_images_keeps_order_and_drops_duplicates(mixed_folder):
    top = str(mixed_folder / "good_1.jpg")
    found, errors = find_images([top, str(mixed_folder), str(mixed_folder / "nothing_*.jpg")])
    assert found[0] == top and found.count(top) == 1
    assert {Path(path).name for path in found} == {"good_1.jpg", "good_2.png", "good_3.jpg", "not_an_image.jpg",
                                                   "empty.png", "truncated.jpg"}
    assert errors == [f"{mixed_folder / 'nothing_*.jpg'}: no file matches this pattern"]
