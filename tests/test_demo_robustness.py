"""The demo under worst-case uploads and malformed API calls, on the app as demo.py builds it: a
40-megapixel RGBA PNG is captioned with bounded memory, the upload cache is cleaned, every refusal
carries its message (never `{"error": null}`) and logs no traceback, and one broken checkpoint under
--runs-dir does not keep the others from being served. Peak RSS under concurrent worst-case uploads
is measured by benchmarks/demo_memory.py (docs/demo.md)."""
from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import requests
from PIL import Image

from captioner.demo import app as demo
from captioner.demo.service import ModelCatalog
from captioner.images import load_image

gradio_client = pytest.importorskip("gradio_client")

WORST_SIDE = 6300  # 39.7 MP: the largest square the loader accepts


def rgba_png(path: Path, side: int) -> Path:
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(path)
    return path


@pytest.fixture(scope="module")
def served(untrained_checkpoint):
    """(base URL, app): demo.build_app + demo.launch_options, on a free port."""
    app = demo.build_app(ModelCatalog({"tiny/best.pt": untrained_checkpoint}))
    app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{app.server_port}", app
    app.close()


def test_worst_case_upload_is_captioned(served, tmp_path):
    url, _ = served
    image = rgba_png(tmp_path / "worst.png", WORST_SIDE)
    assert image.stat().st_size < 300_000  # a small file ...
    client = gradio_client.Client(url + "/", verbose=False)
    caption = client.predict(gradio_client.handle_file(str(image)), 1, api_name="/caption")  # ... of 160 MB of RGBA
    assert isinstance(caption, str) and caption


def test_alpha_is_composited_in_strips_not_in_full_size_int32_copies(tmp_path):
    """numpy's temporaries (tracemalloc sees them) stay at a few strips, whatever the image height; the
    whole-image int32 arithmetic used ~16 bytes per pixel and channel (here over 300 MB)."""
    path = rgba_png(tmp_path / "tall.png", 3000)
    tracemalloc.start()
    try:
        image = load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MB of numpy temporaries"
    expected = [(c * 128 + 255 * 127 + 127) // 255 for c in (10, 200, 30)]  # (c·a + 255·(255 − a)) / 255
    assert np.array_equal(np.asarray(image)[[0, 1500, 2999], [0, 2999, 1500]], [expected] * 3)


def test_upload_cache_is_cleaned_on_a_schedule(served):
    _, app = served
    frequency, age = app.delete_cache
    assert (frequency, age) == demo.DELETE_CACHE and 0 < frequency <= age <= 24 * 3600


def call(url: str, api: str, data: list) -> str:
    """A raw API call (what a script without gradio_client sends): the event stream's text."""
    body = json.dumps({"data": data})  # allow_nan: what a script may send, though JSON has no NaN
    event = requests.post(f"{url}/gradio_api/call/{api}", data=body, headers={"Content-Type": "application/json"},
                          timeout=30).json()["event_id"]
    return requests.get(f"{url}/gradio_api/call/{api}/{event}", timeout=60).text


def uploaded_png(url: str, content: bytes, name: str = "upload.png") -> dict:
    path = requests.post(f"{url}/gradio_api/upload", files={"files": (name, content)}, timeout=30).json()[0]
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_refusals_carry_their_message_and_log_no_traceback(served, capfd):
    url, _ = served
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    good, text = uploaded_png(url, buffer.getvalue()), uploaded_png(url, b"not an image", "notes.png")
    settings = [3, 20, "beam search", 1.0, "tiny/best.pt"]
    cases = {
        "notes.png: not a supported image": [text, *settings],
        "Expected a `float`, but the value passed to the event handler was: 'abc'": [good, "abc", *settings[1:]],
        "didn't receive enough input values (needed: 6, got: 1)": [good],
        "Value 99 is greater than maximum value 10": [good, 99, *settings[1:]],
        "is not in the list of choices": [good, *settings[:-1], "elsewhere/best.pt"],
        "was not uploaded to this demo": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, *settings],
        "invalid request: a file input names a file that was not uploaded to this demo": [{"path": "x.jpg", "meta": {"_type": "gradio.FileData"}}, *settings],
        "beam size: expected a number, got nan": [good, float("nan"), *settings[1:]],  # raw JSON NaN passes the slider
    }
    capfd.readouterr()
    for expected, data in cases.items():
        stream = call(url, "caption", data)
        assert stream.startswith("event: error"), stream[:200]
        message = json.loads(stream.split("data:", 1)[1])["error"]
        assert isinstance(message, str) and expected in message and "\n" not in message, (expected, message)
        assert os.getcwd() not in message and "/tmp" not in message, message  # no server path, ever
    deep = "[" * 100_000 + "]" * 100_000  # JSON nested 100,000 levels: refused by the parser, not a RecursionError
    response = requests.post(f"{url}/gradio_api/call/caption", data=f'{{"data": [{deep}]}}', timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "Traceback" not in response.text
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out


def test_an_internal_error_is_logged_once_and_answered_with_a_message(served, capfd, caplog, monkeypatch):
    url, _ = served
    monkeypatch.setattr(demo, "caption_images", lambda *args: 1 / 0)  # a bug inside a handler
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    capfd.readouterr()
    stream = call(url, "caption", [uploaded_png(url, buffer.getvalue()), 3, 20, "beam search", 1.0, "tiny/best.pt"])
    assert "internal error" in json.loads(stream.split("data:", 1)[1])["error"]
    failures = [record for record in caplog.records if record.name == "captioner.demo"]
    assert len(failures) == 1 and failures[0].exc_info[0] is ZeroDivisionError  # its traceback, logged once
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out  # and not printed a second time by Gradio


def test_one_broken_checkpoint_under_runs_dir_does_not_stop_the_demo(untrained_checkpoint, tmp_path, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda app, **options: launched.append(app))
    monkeypatch.setattr(demo, "shipped_models", lambda: [])  # the runs alone: the shipped model would come first
    runs = tmp_path / "runs"
    for name in ("a-broken", "b-good"):
        (runs / name).mkdir(parents=True)
    (runs / "a-broken" / "best.pt").write_bytes(b"PK\x03\x04 cut short")
    (runs / "b-good" / "best.pt").write_bytes(untrained_checkpoint.read_bytes())
    assert demo.main(["--runs-dir", str(runs)]) == 0 and len(launched) == 1
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: skipping {runs / 'a-broken' / 'best.pt'}: ") and "damaged" in warning
    (runs / "b-good" / "best.pt").write_bytes(b"not a zip")  # now none loads: refused, naming the last one
    assert demo.main(["--runs-dir", str(runs)]) == 2 and len(launched) == 1
    assert "b-good/best.pt: checkpoint is damaged" in capsys.readouterr().err


def noise_png(path: Path, size: tuple[int, int], seed: int) -> Path:
    """Random pixels: the PNG stays about as large as the raw RGB (no compression to speak of)."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_a_batch_is_read_one_image_at_a_time_within_a_pixel_budget(served, tmp_path, monkeypatch):
    """/caption_batch kept every decoded upload alive and copied each for its thumbnail (16 uploads of a
    40 MP PNG: 3.6 GB). Now, whenever an upload is decoded, every earlier one is a thumbnail already;
    and uploads past the request's pixel budget are skipped, each named."""
    from captioner.demo import uploads

    url, _ = served
    decoded: list = []

    def load_and_check(*args, **kwargs):
        assert all(max(image.size) <= uploads.THUMBNAIL_SIDE for image in decoded), "a full-size image is still held"
        decoded.append(real_load(*args, **kwargs))
        return decoded[-1]

    real_load = uploads.load_image
    monkeypatch.setattr(uploads, "load_image", load_and_check)
    monkeypatch.setattr(uploads, "MAX_REQUEST_PIXELS", 3 * 600 * 400)
    files = [gradio_client.handle_file(str(noise_png(tmp_path / f"photo{index}.png", (600, 400), index)))
             for index in range(5)]
    client = gradio_client.Client(url + "/", verbose=False)
    gallery, notes = client.predict(files, 1, api_name="/caption_batch")
    assert [item["caption"].split(":")[0] for item in gallery] == ["photo0.png", "photo1.png", "photo2.png"]
    assert len(decoded) == 3 and notes.splitlines() == [
        f"- skipped photo{index}.png: past this request's budget of 0.72 megapixels for all its images; "
        "send it in another batch" for index in (3, 4)]


def test_upload_cache_is_bounded_in_bytes(served, tmp_path):
    """30 uploads of 9 MB used to stay for an hour; now the oldest go as soon as all pass the bound."""
    url, app = served
    bound, app.upload_file_set.max_bytes = app.upload_file_set.max_bytes, 250_000
    try:
        paths = [uploaded_png(url, noise_png(tmp_path / f"noise{index}.png", (170, 170), index).read_bytes(),
                              f"noise{index}.png")["path"] for index in range(5)]  # ~87 KB each
        kept = [path for path in paths if Path(path).exists()]
        assert kept == paths[-2:] and set(paths[:-2]).isdisjoint(app.upload_file_set)
        assert sum(Path(path).stat().st_size for path in app.upload_file_set) <= 250_000
        settings = [1, 20, "beam search", 1.0, "tiny/best.pt"]
        assert call(url, "caption", [{"path": paths[-1], "meta": {"_type": "gradio.FileData"}}, *settings]).startswith(
            "event: complete")
        stream = call(url, "caption", [{"path": paths[0], "meta": {"_type": "gradio.FileData"}}, *settings])
        assert '"error": "noise0.png: file not found"' in stream  # one line, naming the upload
    finally:
        app.upload_file_set.max_bytes = bound
