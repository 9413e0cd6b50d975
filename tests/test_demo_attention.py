"""The demo's "Where it looked" view through a real gradio_client, its plain sentence for a model without
attention, and where the demo listens: flags, then GRADIO_SERVER_NAME/PORT, then 127.0.0.1:7860."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from conftest import REPO
from PIL import Image

from captioner.config import ModelConfig
from captioner.decoding import Generation
from captioner.demo.attention import attention_view
from captioner.demo.service import ModelCatalog
from captioner.model import Captioner
from captioner.vocab import Vocabulary

gradio_client = pytest.importorskip("gradio_client")
SCENE = REPO / "examples" / "images" / "shapes_202.jpg"


@pytest.fixture(scope="module")
def client(tiny_run):
    from captioner.demo import app as demo

    app = demo.build_app(ModelCatalog({"tiny/best.pt": tiny_run / "best.pt"}))
    app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
    yield gradio_client.Client(f"http://127.0.0.1:{app.server_port}/", verbose=False)
    app.close()


def test_attention_endpoint_returns_the_caption_and_one_figure(client):
    header, plot = client.predict(gradio_client.handle_file(str(SCENE)), 2, 20, "beam search", 1.0, "tiny/best.pt",
                                  api_name="/attention")
    caption = client.predict(gradio_client.handle_file(str(SCENE)), 2, 20, "beam search", 1.0, "tiny/best.pt",
                             api_name="/caption")
    assert header.startswith(f"**Caption:** {caption}") and "4×4 grid" in header and "h_t" in header
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png")


def test_a_model_without_attention_says_so_plainly():
    torch.manual_seed(0)
    model = Captioner(ModelConfig(embed_size=8, hidden_size=12, dropout=0.0), Vocabulary(["a", "circle"])).eval()
    pixels = model.pixels([Image.new("RGB", (64, 64), "red")])
    header, figure = attention_view(model, pixels, Generation([[4]], [-1.0], [True]), "circle")
    assert figure is None and "has no attention" in header and "Show and Tell" in header


def test_flags_win_then_gradio_variables_then_the_safe_defaults():
    from captioner.demo.app import server_address

    environment = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7999"}
    assert server_address(None, None, {}) == ("127.0.0.1", 7860)
    assert server_address(None, None, environment) == ("0.0.0.0", 7999)
    assert server_address("127.0.0.1", 8000, environment) == ("127.0.0.1", 8000)
    assert server_address(None, 8001, {"GRADIO_SERVER_PORT": " "}) == ("127.0.0.1", 8001)
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ValueError, match="GRADIO_SERVER_PORT|port"):
            server_address(None, None, {"GRADIO_SERVER_PORT": bad})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(180)
def test_gradio_server_port_moves_the_real_demo(tiny_run):
    """demo.py with GRADIO_SERVER_PORT set (and no --port) serves on that port, on 127.0.0.1."""
    port = free_port()
    environment = {**os.environ, "GRADIO_SERVER_PORT": str(port), "OMP_WAIT_POLICY": "PASSIVE"}
    environment.pop("GRADIO_SERVER_NAME", None)
    process = subprocess.Popen([sys.executable, "demo.py", "--checkpoint", str(tiny_run / "best.pt"), "--runs-dir",
                                str(tiny_run / "none"), "--threads", "1"], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.monotonic() + 150, None
        while page is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(0.5)
        ended = process.poll() is not None
        assert page is not None, f"nothing served on {port}: {process.stderr.read()[-2000:] if ended else 'no answer'}"
        assert "captioner" in page
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bad_gradio_server_port_exits_2(monkeypatch, capsys):
    from captioner.demo import app as demo

    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    assert demo.main(["--checkpoint", "none.pt"]) == 2
    assert "GRADIO_SERVER_PORT='http': expected a port number" in capsys.readouterr().err
