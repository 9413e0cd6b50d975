"""The demo under hostile or heavy use , on the app exactly as demo.py builds it.

No port is bound for a missing or damaged checkpoint; uploads over the size limit are refused by the
upload route; a burst beyond the queue gets "queue full" for the extras while the rest finish; and file
routes probed with absolute paths, `..` and the checkpoint's own path answer 403/404 and never content.
The ordinary caption and bad-upload cases are in test_demo_app.py.
"""
from __future__ import annotations

import http.client
import io
import json
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import pytest
from conftest import REPO
from PIL import Image

from captioner.demo import app as demo
from captioner.demo.service import ModelCatalog

gradio_client = pytest.importorskip("gradio_client")

QUEUE_SIZE, CONCURRENCY = 2, 1  # small, so a burst of a few requests overflows the queue
SLOW_SECONDS = 1.0  # each caption takes this long while `slow` is set


@pytest.fixture(scope="module")
def served(untrained_checkpoint):
    """(port, slow): demo.build_app + demo.launch_options, with a small queue and a switch for slow captions."""
    slow = threading.Event()
    real_caption_images = demo.caption_images

    def maybe_slow(*args, **kwargs):
        if slow.is_set():
            time.sleep(SLOW_SECONDS)
        return real_caption_images(*args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(demo, "QUEUE_SIZE", QUEUE_SIZE)
        monkeypatch.setattr(demo, "CONCURRENCY", CONCURRENCY)
        monkeypatch.setattr(demo, "caption_images", maybe_slow)
        app = demo.build_app(ModelCatalog({"tiny/best.pt": untrained_checkpoint}))
        app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
        yield app.server_port, slow
        app.close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Raw HTTP, so `..` and %2F reach the server exactly as written (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def upload(port: int, name: str, content: bytes):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", "/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


# --- case 14: no checkpoint, no server ------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("none.pt", None, "none.pt not found"),
    ("cut.pt", b"PK\x03\x04 cut short", "cut.pt: checkpoint is damaged"),
], ids=["missing", "damaged"])
def test_unusable_checkpoint_exits_2_before_any_port_is_bound(tmp_path, monkeypatch, capsys, name, content, expected):
    def launch_must_not_happen(*args, **kwargs):
        raise AssertionError("the demo launched a server for an unusable checkpoint")

    monkeypatch.setattr(gr.Blocks, "launch", launch_must_not_happen)
    target = tmp_path / name
    if content is not None:
        target.write_bytes(content)
    code = demo.main(["--checkpoint", str(target), "--runs-dir", str(tmp_path / "no-runs")])
    message = capsys.readouterr().err
    assert code == 2 and expected in message and str(tmp_path) in message


# --- case 21: size limit and a bounded queue ------------------------------------------------------------------

def test_upload_over_the_size_limit_is_refused_by_the_upload_route(served):
    port, _ = served
    status, body = upload(port, "small.png", png_bytes())
    assert status == 200 and json.loads(body)[0].endswith("small.png")  # the route works for a normal file
    status, body = upload(port, "big.png", png_bytes() + bytes(10 * 1024 * 1024 + 1))
    assert status == 413, body[:200]
    assert b"size" in body.lower() and b"Traceback" not in body


def test_burst_beyond_the_queue_gets_queue_full_while_the_others_finish(served, tmp_path):
    port, slow = served
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes())
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    burst = 3 * (QUEUE_SIZE + CONCURRENCY)
    slow.set()
    try:
        jobs = [client.submit(gradio_client.handle_file(str(image)), 1, api_name="/caption") for _ in range(burst)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(("done", job.result(timeout=60)))
            except Exception as error:  # gradio_client raises QueueError for a full queue
                outcomes.append(("refused", str(error)))
    finally:
        slow.clear()
    finished = [value for kind, value in outcomes if kind == "done"]
    refused = [value for kind, value in outcomes if kind == "refused"]
    assert refused and all("queue is full" in message.lower() for message in refused), refused
    assert len(finished) >= QUEUE_SIZE and all(isinstance(caption, str) and caption for caption in finished)
    assert client.predict(gradio_client.handle_file(str(image)), 1, api_name="/caption")  # serves again afterwards


# --- case 22: path probes never return a file's content -------------------------------------------------------

FILE_ROUTES = ["/gradio_api/file=", "/gradio_api/file/", "/file="]


def probe_targets(checkpoint: Path, uploaded: str) -> list[str]:
    """Absolute paths, `..` (plain and %2F-encoded), the checkpoint, the sources, and escapes from the
    upload cache, which is the one directory the app does serve."""
    cache = str(Path(uploaded).parent)
    return ["/etc/passwd", "%2Fetc%2Fpasswd", "../../../../../../etc/passwd", "..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "file:///etc/passwd", "//etc/passwd", str(checkpoint), f"{checkpoint.parent.name}/{checkpoint.name}",
            "train.py", "demo.py", str(REPO / "train.py"), f"{cache}/../../../../etc/passwd",
            f"{cache}/..%2F..%2F..%2F..%2Fetc%2Fpasswd", f"{cache}/../../../../{checkpoint}"]


def test_path_probes_get_403_or_404_and_never_content(served, untrained_checkpoint):
    port, _ = served
    status, body = upload(port, "mine.png", png_bytes())
    uploaded = json.loads(body)[0]
    status, content = request(port, "GET", f"/gradio_api/file={uploaded}")
    assert status == 200 and content == png_bytes()  # the probe harness can read a served file
    secrets = [Path("/etc/passwd").read_bytes()[:32], untrained_checkpoint.read_bytes()[:64],
               (REPO / "train.py").read_bytes()[:64], (REPO / "demo.py").read_bytes()[:64]]
    for route in FILE_ROUTES:
        for target in probe_targets(untrained_checkpoint, uploaded):
            status, body = request(port, "GET", route + target)
            assert status in (403, 404), (route + target, status, body[:100])
            assert not any(secret in body for secret in secrets), route + target
