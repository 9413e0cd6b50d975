"""The demo: launched in-process and called through a real gradio_client (caption, batch, every bad
upload), plus its pure helpers (checkpoint discovery, summary, decoding options, the LSTM trace)."""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from captioner import load_checkpoint
from captioner.config import Config, ModelConfig
from captioner.demo import gates
from captioner.demo.service import (
    DemoInputError,
    ModelCatalog,
    alternatives_table,
    caption_images,
    find_checkpoints,
    model_summary,
    requested_decoding,
)
from captioner.demo.uploads import read_batch, read_upload
from captioner.images import load_image
from captioner.model import Captioner
from captioner.vocab import Vocabulary

gradio_client = pytest.importorskip("gradio_client")
handle_file = gradio_client.handle_file


@pytest.fixture(scope="module")
def served(tiny_run):
    """(client, model): the app built and launched exactly as main() does, on a free port."""
    from captioner.demo import app as demo

    model = load_checkpoint(tiny_run / "best.pt")
    app = demo.build_app(ModelCatalog({"tiny/best.pt": tiny_run / "best.pt"}))
    app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
    yield gradio_client.Client(f"http://127.0.0.1:{app.server_port}/", verbose=False), model
    app.close()


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def scene_file(tmp_path, name: str = "scene.png", colour: str = "white"):
    path = tmp_path / name
    Image.new("RGB", (64, 64), colour).save(path)
    return path


def test_caption_endpoint(client, tmp_path):
    caption = client.predict(handle_file(str(scene_file(tmp_path))), 2, api_name="/caption")
    assert isinstance(caption, str) and caption.strip()


def test_caption_matches_the_model_for_every_decoding_mode(served, tmp_path):
    client, model = served
    path = REPO / "examples" / "images" / "shapes_101.jpg"
    image = load_image(path)
    for mode, beam in (("beam search", 3), ("greedy", 1)):
        expected = model.caption([image], replace(model.decoding, beam_size=beam, max_length=12))[0]
        assert client.predict(handle_file(str(path)), 3, 12, mode, 1.0, api_name="/caption") == expected
    sampled = client.predict(handle_file(str(path)), 3, 4, "sampling", 0.7, api_name="/caption")
    assert 1 <= len(sampled.split()) <= 4 and set(sampled.split()) <= set(model.vocab.words)


BAD_UPLOADS = {  # name -> (file bytes maker, what the message must say)
    "notes.png": (lambda: b"this is not an image", "not a supported image"),
    "empty.png": (lambda: b"", "empty"),
    "cut.jpg": (lambda: _jpeg_bytes()[:2000], "truncated"),
    "bomb.png": (lambda: _png_bytes(Image.new("1", (8000, 6000))), "decompression bomb"),
    "strip.png": (lambda: _png_bytes(Image.new("RGB", (2000, 20))), "aspect ratio"),
}


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_upload_gets_clear_error_and_app_keeps_serving(client, tmp_path, name):
    make_bytes, phrase = BAD_UPLOADS[name]
    bad = tmp_path / name
    bad.write_bytes(make_bytes())
    with pytest.raises(Exception) as raised:
        client.predict(handle_file(str(bad)), 1, api_name="/caption")
    message = str(raised.value)
    assert name in message and phrase in message
    assert "Traceback" not in message and str(tmp_path) not in message and "/tmp/gradio" not in message
    assert client.predict(handle_file(str(scene_file(tmp_path, "ok.png", "blue"))), 1, api_name="/caption").strip()


def test_upload_over_the_size_limit_is_refused(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png_bytes(Image.new("RGB", (8, 8))) + bytes(11 * 1024 * 1024))
    with pytest.raises(Exception) as raised:
        client.predict(handle_file(str(big)), 1, api_name="/caption")
    assert "Traceback" not in str(raised.value)


def test_batch_captions_every_good_image_and_names_the_bad_ones(served, tmp_path):
    client, model = served
    files = [scene_file(tmp_path, "red.png", "red"), scene_file(tmp_path, "green.png", "green")]
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    gallery, notes = client.predict([handle_file(str(path)) for path in [*files, tmp_path / "notes.png"]],
                                    2, api_name="/caption_batch")
    expected = model.caption([load_image(path) for path in files], replace(model.decoding, beam_size=2))
    assert [item["caption"] for item in gallery] == [f"red.png: {expected[0]}", f"green.png: {expected[1]}"]
    assert "notes.png: not a supported image" in notes


def test_batch_decodes_with_the_shared_loader_exif_and_alpha(client, tmp_path):
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.new("RGB", (60, 30), "red").save(rotated, exif=exif.tobytes())
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(clear)  # fully transparent: composited on white
    gallery, _ = client.predict([handle_file(str(rotated)), handle_file(str(clear))], 1, api_name="/caption_batch")
    with Image.open(gallery[0]["image"]) as upright, Image.open(gallery[1]["image"]) as white:
        assert upright.size == (30, 60)
        assert min(white.convert("RGB").getpixel((15, 15))) >= 250


def test_batch_of_only_bad_files_is_an_error(client, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(Exception, match="No image could be read: empty.png"):
        client.predict([handle_file(str(tmp_path / "empty.png"))], api_name="/caption_batch")


def test_inside_endpoint_returns_caption_and_three_plots(client):
    header, *plots = client.predict(handle_file(str(REPO / "examples/images/shapes_202.jpg")), api_name="/inside")
    assert header.startswith("**Caption:**") and "lstm" in header
    assert len(plots) == 3 and all(plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png")
                                   for plot in plots)


def test_model_summary_says_what_the_model_describes(client):
    summary = client.predict("tiny/best.pt", api_name="/model_summary")
    assert "small_cnn" in summary and "lstm" in summary and "BLEU-4" in summary
    assert "not photos" in summary and "Train on Flickr8k / Flickr30k / COCO" in summary


def test_unknown_model_label_is_refused(client, tmp_path):
    with pytest.raises(Exception):
        client.predict(handle_file(str(scene_file(tmp_path))), 1, 20, "greedy", 1.0, "../../etc/passwd",
                       api_name="/caption")


def test_safe_launch_settings():
    from captioner.demo import app as demo

    options = demo.launch_options()
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["max_file_size"] == "10mb" and options["show_error"] is False
    assert options["enable_monitoring"] is False and options["run_history"] is False and options["mcp_server"] is False
    assert demo.QUEUE_SIZE <= 64 and demo.CONCURRENCY <= 4


def test_missing_checkpoint_exits_with_the_train_command(tmp_path, capsys):
    from captioner.demo import app as demo

    assert demo.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    error = capsys.readouterr().err
    assert "none.pt not found" in error and "python train.py" in error


def test_with_no_run_the_demo_serves_the_shipped_photo_model(tmp_path, monkeypatch):
    import gradio as gr

    from captioner.demo import app as demo
    from captioner.release import DEFAULT_MODEL

    served = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda app, **options: served.append(app))
    assert demo.main(["--runs-dir", str(tmp_path)]) == 0 and len(served) == 1
    catalog = demo.find_models(None, str(tmp_path), "cpu")
    assert catalog.labels == [DEFAULT_MODEL]
    assert "people, dogs and outdoor scenes" in model_summary(catalog.get(DEFAULT_MODEL), catalog.checkpoints[DEFAULT_MODEL])


def test_with_nothing_to_serve_the_demo_exits_with_the_train_command(tmp_path, monkeypatch, capsys):
    from captioner.demo import app as demo

    monkeypatch.setattr(demo, "shipped_models", lambda: [])
    assert demo.main(["--runs-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no shipped model and no checkpoint" in error and "python train.py" in error


# ---- pure helpers, no server ----

def test_find_checkpoints_prefers_best_and_reads_metrics(tmp_path, tiny_run):
    for run, names in {"a": ["best.pt", "last.pt"], "b": ["last.pt"], "c/deep": ["best.pt"]}.items():
        (tmp_path / run).mkdir(parents=True)
        for name in names:
            (tmp_path / run / name).write_bytes(b"")
    found = [str(path.relative_to(tmp_path)) for path in find_checkpoints(tmp_path)]
    assert found == ["a/best.pt", "b/last.pt", "c/deep/best.pt"]
    assert find_checkpoints(tmp_path / "missing") == []
    summary = model_summary(load_checkpoint(tiny_run / "best.pt"), tiny_run / "best.pt")
    bleu4 = json.loads((tiny_run / "metrics.json").read_text())["bleu4"]
    assert f"BLEU-4 {bleu4:.1f}" in summary and "test split" in summary


def test_find_models_puts_the_photo_model_first_then_the_runs(tmp_path):
    from captioner.demo import app as demo
    from captioner.release import DEFAULT_MODEL

    for run in ("a", "shapes"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "best.pt").write_bytes(b"")
        (tmp_path / run / "config.yaml").write_text(f"data: {{format: {'shapes' if run == 'shapes' else 'folder'}}}\n")
    catalog = demo.find_models(None, str(tmp_path), "cpu")
    assert catalog.labels == [DEFAULT_MODEL, "shapes/best.pt", "a/best.pt"]
    examples = {Path(image).name: label for image, label in demo.example_rows(catalog)}
    assert examples["photo_chelsea.jpg"] == DEFAULT_MODEL and examples["shapes_101.jpg"] == "shapes/best.pt"
    chosen = demo.find_models(str(tmp_path / "a" / "best.pt"), str(tmp_path), "cpu")
    assert chosen.labels == ["a/best.pt", DEFAULT_MODEL, "shapes/best.pt"]
    with pytest.raises(DemoInputError, match="not one of the checkpoints"):
        chosen.get("/etc/passwd")


def test_a_request_changes_the_model_decoding_within_limits():
    model = tiny_model("lstm")
    model.decoding = replace(model.decoding, no_repeat_ngram_size=2)  # the checkpoint's own rule is kept
    assert requested_decoding(model, "greedy", beam_size=5) == replace(model.decoding, beam_size=1, max_length=20)
    sampling = requested_decoding(model, "sampling", max_length=7, temperature=0.5, seed=1)
    assert sampling == replace(model.decoding, max_length=7, temperature=0.5, seed=1)
    for bad in ({"mode": "top-p"}, {"beam_size": 0}, {"max_length": 500}, {"mode": "sampling", "temperature": 0.0}):
        with pytest.raises(DemoInputError):
            requested_decoding(model, **bad)


def test_read_batch_skips_bad_files_and_bounds_the_batch(tmp_path):
    good = scene_file(tmp_path, "good.png")
    (tmp_path / "bad.png").write_bytes(b"GIF89a broken")
    model = tiny_model("lstm")
    batch = read_batch(model, [str(good), str(tmp_path / "bad.png")])
    assert batch.names == ["good.png"] and len(batch.skipped) == 1 and batch.skipped[0].startswith("bad.png")
    assert torch.equal(batch.pixels, model.pixels([load_image(good)])) and batch.thumbnails[0].mode == "RGB"
    with pytest.raises(DemoInputError, match="at most 16 images"):
        read_batch(model, [str(good)] * 17)
    with pytest.raises(DemoInputError, match="upload one or more"):
        read_batch(model, [])


def tiny_model(cell: str, num_layers: int = 2, attention: bool = False) -> Captioner:
    torch.manual_seed(0)
    config = Config(model=ModelConfig(embed_size=8, hidden_size=12, num_layers=num_layers, cell=cell, dropout=0.0,
                                      attention=attention))
    return Captioner(config.model, Vocabulary(["a", "red", "blue", "circle", "square"])).eval()


def test_alternatives_are_ranked_with_their_log_probabilities():
    model = tiny_model("lstm")
    decoding = requested_decoding(model, beam_size=3, max_length=6)
    generation = caption_images(model, [Image.new("RGB", (64, 64), "red")], decoding)[0]
    rows = alternatives_table(generation)
    assert [row[0] for row in rows] == [1, 2, 3] and rows[0][2] == round(generation.log_probs[0], 3)
    assert all(isinstance(row[1], str) and row[1] for row in rows)


@pytest.mark.parametrize("cell, attention", [("rnn", False), ("lstm", False), ("peephole", False),
                                             ("coupled", False), ("gru", False), ("lstm", True), ("gru", True)])
def test_trace_replays_the_caption_and_plots_what_the_cell_has(cell, attention):
    model = tiny_model(cell, attention=attention)
    pixels = model.encoder.preprocess(Image.new("RGB", (64, 64), "blue")).unsqueeze(0)  # (1, 3, 64, 64)
    generation = model.generate(pixels, replace(model.decoding, beam_size=1, max_length=6))[0]
    trace = gates.trace_caption(model, pixels, generation.token_ids[0], generation.finished[0])
    assert trace.words[: len(generation.words[0])] == generation.words[0]
    assert len(trace.layers) == 2 and all(values.shape == (len(trace.words), 12)
                                          for layer in trace.layers for values in layer.values())
    # the replay reproduces the decoder: the chosen words' log-probabilities sum to the search's score
    assert math.isclose(float(np.log(trace.probabilities).sum()), generation.log_probs[0], abs_tol=1e-4)
    assert gates.has_cell_state(trace) == (cell not in ("rnn", "gru"))
    gate_titles = [axis.get_title() for axis in gates.plot_gates(trace).axes]
    assert all(("no gates" in title) == (cell == "rnn") for title in gate_titles)
    cell_titles = [axis.get_title() for axis in gates.plot_cells(trace, units=5).axes if axis.get_title()]
    assert len(cell_titles) == 2 and all(("c_t" in title) == gates.has_cell_state(trace) for title in cell_titles)
    assert len(gates.plot_probabilities(trace).axes[0].patches) == len(trace.words)
    assert "rnn" not in vars(model.decoder), "the shared model must not be modified by a trace"


def test_most_active_units_ranks_by_mean_absolute_value():
    values = np.array([[0.1, -2.0, 0.5], [0.1, 2.0, -0.4]])  # (T=2, H=3)
    assert gates.most_active_units(values, 2).tolist() == [1, 2]


def test_a_transparent_png_gives_the_same_pixels_through_the_api_and_the_demo(tmp_path):
    """One image -> pixels path: `Captioner.caption` on a PIL image as the user opened it, and the demo's upload
    through the loader, both put transparency on white (the loader's rule), so the captions agree too."""
    path = tmp_path / "transparent.png"
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black ...
    image.paste((200, 30, 30, 255), (16, 16, 48, 48))  # ... around an opaque red square
    image.save(path)
    model = tiny_model("lstm")
    opened = Image.open(path)
    assert opened.mode == "RGBA"
    through_api = model.pixels([opened])
    through_demo = model.pixels([read_upload(str(path))])
    assert torch.equal(through_api, through_demo)
    assert through_api[0, :, 0, 0].tolist() == [255, 255, 255]  # transparent corner: white, not black
    decoding = requested_decoding(model, beam_size=2, max_length=6)
    demo_words = caption_images(model, [read_upload(str(path))], decoding)[0].words[0]
    assert model.caption([opened], replace(model.decoding, beam_size=2, max_length=6)) == [" ".join(demo_words)]
