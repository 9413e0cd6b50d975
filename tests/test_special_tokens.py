"""No caption shows a special token, on every path a caption reaches a person: the evaluation command,
`Captioner.caption` and the demo. Each test uses a model pushed hard towards <unk>, so that without the
rule the captions would be full of it (eval.allow_unknown_word=true shows that they are)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_model import make_model
from test_train import run_evaluation

from captioner.checkpoint import read_checkpoint, save_checkpoint
from captioner.data.records import ImageRecord
from captioner.evaluation import evaluate
from captioner.metrics.repetition import caption_quality, repeated_content_words, shows_special_token

pytestmark = pytest.mark.usefixtures("one_thread")


def unknown_loving_model():
    """A model whose decoder prefers <unk> above every other word, at every step."""
    model = make_model().eval()
    with torch.no_grad():
        model.decoder.output.bias[model.vocab.unk_id] += 30.0
    return model


def photos(count: int = 3) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]


def test_captioner_caption_never_shows_a_special_token():
    model = unknown_loving_model()
    captions = model.caption(photos(), replace(model.decoding, beam_size=3))
    assert captions and not any(shows_special_token(caption) for caption in captions)
    raw = model.generate(model.pixels(photos()), replace(model.decoding, beam_size=3, allow_unknown_word=True))
    assert all("<unk>" in generation.words[0] for generation in raw)  # the rule, not the model, removed it
    sampled = model.generate(model.pixels(photos()), replace(model.decoding, temperature=1.0, seed=0, num_samples=4))
    assert not any("<unk>" in words for generation in sampled for words in generation.words)


def test_caption_and_demo_follow_the_checkpoint_eval_settings():
    """A run saved with eval.allow_unknown_word: true gets the raw model in the API and the demo too."""
    from captioner.demo.service import caption_images, requested_decoding

    model = unknown_loving_model()
    model.decoding = replace(model.decoding, allow_unknown_word=True)  # as load_checkpoint sets it from eval.*
    assert all("<unk>" in caption.split() for caption in model.caption(photos()))
    generations = caption_images(model, photos(), requested_decoding(model, "greedy"))
    assert all("<unk>" in generation.words[0] for generation in generations)


def test_evaluate_never_shows_a_special_token_and_counts_them():
    model = unknown_loving_model()
    pixels = model.pixels(photos())
    records = [ImageRecord(f"photo{i}", f"photo{i}.png", ("a red circle", "a blue square"), "test") for i in range(3)]
    decoding = replace(model.decoding, beam_size=3, max_length=8)
    metrics, captions = evaluate(model, records, "test", decoding, pixels=pixels)
    assert not any(shows_special_token(caption) for caption in captions) and metrics["special_token_percent"] == 0.0
    raw, raw_captions = evaluate(model, records, "test", replace(decoding, allow_unknown_word=True), pixels=pixels)
    assert raw["special_token_percent"] == 100.0 and all("<unk>" in caption for caption in raw_captions)


def test_evaluation_command_never_shows_a_special_token(tiny_run, tmp_path):
    """The command's default is the checkpoint's eval.allow_unknown_word (false); the flag gives the raw model."""
    payload = read_checkpoint(tiny_run / "best.pt")
    bias = next(name for name in payload["model"] if name.endswith("output.bias"))
    payload["model"][bias][3] += 30.0  # id 3 is <unk>
    save_checkpoint({key: value for key, value in payload.items() if key != "format_version"}, tmp_path / "unk.pt")
    default = run_evaluation(tmp_path / "unk.pt", tmp_path / "eval.json")
    assert default["metrics"]["special_token_percent"] == 0.0 and default["metrics"]["allow_unknown_word"] is False
    assert not any(shows_special_token(example["generated"]) for example in default["captions"])
    raw = run_evaluation(tmp_path / "unk.pt", tmp_path / "raw.json", "--allow-unknown-word")
    assert raw["metrics"]["special_token_percent"] == 100.0


@pytest.mark.parametrize("decoding", ["beam search", "greedy", "sampling"])
def test_demo_never_shows_a_special_token(decoding, tmp_path):
    from captioner.demo.app import Handlers
    from captioner.demo.service import ModelCatalog

    handlers = Handlers(ModelCatalog.single(unknown_loving_model()))
    paths = []
    for index, photo in enumerate(photos()):
        paths.append(str(tmp_path / f"photo{index}.png"))
        photo.save(paths[-1])
    caption, table = handlers.caption(paths[0], beam_size=3, max_length=8, decoding=decoding, temperature=1.0)
    assert caption and not shows_special_token(caption)
    assert not any(shows_special_token(row[1]) for row in table)  # the alternatives too
    gallery, _ = handlers.caption_batch(paths, 3, 8, decoding, 1.0)
    assert len(gallery) == 3 and not any(shows_special_token(text) for _, text in gallery)


def test_repeated_content_words_ignore_function_words():
    assert repeated_content_words("a white and white dog is running through the snow") == ["white"]
    assert repeated_content_words("a boy in a blue shirt and a black shirt and white shirt") == ["shirt"]
    assert repeated_content_words("a man and a woman are sitting on a bench in the park") == []
    quality = caption_quality(["a dog on a <unk>", "a dog and a dog", "two men in the snow", "a cat"])
    assert quality == {"special_token_percent": 25.0, "repeated_content_word_percent": 25.0}
