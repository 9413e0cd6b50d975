"""The photo model shipped inside the package (captioner/pretrained/): it loads with no network through
the API and the caption command, its captions hold only its own words, its model card shows them as
they are, and on the 113 dev photos of the Flickr8k sample it still scores what its card says."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import REPO, SHARED_SAMPLE

from captioner import from_pretrained
from captioner.config import DataConfig
from captioner.images import load_image
from captioner.release import DEFAULT_MODEL, SHIPPED_DIR, shipped_models
from captioner.vocab import SPECIAL_TOKENS

RELEASE = SHIPPED_DIR / DEFAULT_MODEL
PHOTOS = sorted((REPO / "examples" / "images").glob("photo_*.jpg"))
MAX_SHIPPED_BYTES = 30 * 10**6


@pytest.fixture(scope="module")
def model():
    real_connect = socket.socket.connect

    def no_network(*args, **kwargs):
        raise AssertionError("the shipped model tried to reach the network")

    socket.socket.connect = no_network
    try:
        yield from_pretrained(DEFAULT_MODEL)
    finally:
        socket.socket.connect = real_connect


@pytest.fixture(scope="module")
def photo_captions(model):
    return model.caption([load_image(path) for path in PHOTOS])


def card() -> str:
    return (RELEASE / "README.md").read_text(encoding="utf-8")


def test_the_shipped_release_was_made_by_the_release_command_and_is_small():
    assert DEFAULT_MODEL in shipped_models()
    assert sum(path.stat().st_size for path in SHIPPED_DIR.rglob("*") if path.is_file()) <= MAX_SHIPPED_BYTES
    provenance = json.loads((RELEASE / "config.json").read_text())["provenance"]
    command = provenance["command"]
    assert command.startswith("python -m captioner.make_release ") and f"captioner/pretrained/{DEFAULT_MODEL}" in command
    assert command in card() and provenance["data_images"] == {"train": 753, "val": 113, "test": 0}


def test_its_captions_of_the_cc0_photos_hold_only_its_words(model, photo_captions):
    assert len(photo_captions) == len(PHOTOS) >= 4
    words = set(model.vocab.words) - set(SPECIAL_TOKENS)
    for path, caption in zip(PHOTOS, photo_captions):
        assert caption and set(caption.split()) <= words, f"{path.name}: {caption!r}"


def test_the_model_card_shows_those_captions_as_they_are(photo_captions):
    for path, caption in zip(PHOTOS, photo_captions):
        assert f"| `examples/images/{path.name}` | {caption} |" in card()
    for words in ("Hodosh, Young & Hockenmaier 2013", "research use", "753 train photos", "113 dev photos",
                  "people, dogs and outdoor scenes", "cross-validation"):
        assert words in card()


def test_the_model_card_is_what_the_release_command_writes_from_config_json(photo_captions):
    from captioner.model_card import render_card

    config = json.loads((RELEASE / "config.json").read_text())
    examples = [(f"examples/images/{path.name}", caption) for path, caption in zip(PHOTOS, photo_captions)]
    assert render_card(config, DEFAULT_MODEL, examples) == card()


def caption_command(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.caption", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_the_caption_command_uses_it_when_given_no_model(model):
    photo = REPO / "examples" / "images" / "photo_chelsea.jpg"
    expected = model.caption([load_image(photo)])[0]
    for arguments in ([], ["--model", str(RELEASE)]):
        done = caption_command(*arguments, str(photo))
        assert done.returncode == 0, done.stderr[-1000:]
        assert done.stdout == f"{photo}\t{expected}\n", arguments


@pytest.mark.parametrize("arguments, message", [
    (["--model", "no-such-model"], "neither a shipped model"),
    (["--model", DEFAULT_MODEL, "--checkpoint", "runs/x/best.pt"], "not allowed with argument"),
], ids=["unknown model", "model and checkpoint"])
def test_the_caption_command_refuses_a_bad_model_choice(arguments, message, capsys):
    from captioner import caption

    try:
        code = caption.main([*arguments, str(PHOTOS[0])])
    except SystemExit as exit:  # argparse's refusal
        code = exit.code
    output = capsys.readouterr()
    assert code == 2 and message in output.err and output.out == ""


def test_it_still_scores_its_model_card_figure_on_the_dev_photos(model):
    if not (SHARED_SAMPLE / "Flickr_8k.devImages.txt").is_file():
        pytest.skip(f"the Flickr8k sample is not at {SHARED_SAMPLE}")
    from captioner.data import load_dataset
    from captioner.evaluation import evaluate

    records = load_dataset(DataConfig(format="flickr8k", root=str(SHARED_SAMPLE)), log=lambda line: None)["val"]
    metrics, captions = evaluate(model, records, "val", replace(model.decoding, beam_size=3), meteor=False)
    promised = float(re.search(r"BLEU-4 (\d+\.\d+)", card()).group(1))
    assert len(records) == 113 and metrics["bleu4"] >= promised - 1.0, (metrics["bleu4"], promised)
    assert metrics["special_token_percent"] == 0
