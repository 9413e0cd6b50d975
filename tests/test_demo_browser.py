"""End to end in a real browser: Debian's chromium, driven by Playwright's sync API, against the demo
launched in-process. Upload an image, wait for its caption, open "Where it looked" and "Inside the
LSTM", check the plots rendered, and save a screenshot of each tab under the test's tmp dir.

CI installs chromium with apt-get (.ci/run); no browser is ever downloaded (never `playwright install`).
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
from conftest import REPO

from captioner import load_checkpoint
from captioner.demo.service import ModelCatalog
from captioner.images import load_image
from captioner.vocab import SPECIAL_TOKENS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def page_url(tiny_run):
    from captioner.demo import app as demo

    app = demo.build_app(ModelCatalog({"tiny/best.pt": tiny_run / "best.pt"}))
    app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{app.server_port}/"
    app.close()


@pytest.fixture()
def page(page_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(page_url)
        yield page
        browser.close()


def test_upload_caption_and_look_inside(page, tiny_run, tmp_path):
    image_path = REPO / "examples" / "images" / "shapes_202.jpg"
    model = load_checkpoint(tiny_run / "best.pt")
    expected = model.caption([load_image(image_path)], replace(model.decoding, beam_size=3, max_length=20))[0]
    assert "not photos" in page.locator("#model-summary").inner_text()

    page.locator("#single-image input[type=file]").set_input_files(str(image_path))
    page.locator("#single-image img").first.wait_for(state="visible")  # the upload finished and shows
    page.locator("#caption-button").click()
    caption_box = page.locator("#caption-text textarea")
    page.wait_for_function("element => element.value.trim().length > 0", arg=caption_box.element_handle())
    assert caption_box.input_value() == expected
    page.locator("#alternatives").get_by_text(expected, exact=True).filter(visible=True).first.wait_for()  # rank 1
    page.screenshot(path=str(tmp_path / "caption_tab.png"), full_page=True)

    page.get_by_role("tab", name="Where it looked").click()
    page.locator("#attention-button").click()
    attention = page.locator("#attention-plot img, #attention-plot canvas").first
    attention.wait_for(state="visible")
    box = attention.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100, f"the attention figure did not render: {box}"
    assert expected in page.locator("#attention-caption").inner_text()
    page.screenshot(path=str(tmp_path / "attention_tab.png"), full_page=True)

    page.get_by_role("tab", name="Inside the LSTM").click()
    page.locator("#inside-button").click()
    for plot_id in ("gate-plot", "cell-plot", "probability-plot"):
        plot = page.locator(f"#{plot_id} img, #{plot_id} canvas").first
        plot.wait_for(state="visible")
        box = plot.bounding_box()
        assert box and box["width"] > 50 and box["height"] > 50, f"{plot_id} did not render: {box}"
    assert expected in page.locator("#inside-caption").inner_text()
    page.screenshot(path=str(tmp_path / "inside_tab.png"), full_page=True)
    assert (tmp_path / "caption_tab.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def shipped_page_url(tmp_path_factory):
    """The demo as `python demo.py` starts it with no run: the shipped photo model first."""
    from captioner.demo import app as demo

    catalog = demo.find_models(None, str(tmp_path_factory.mktemp("no-runs")), "cpu")
    catalog.load_first(skip_unusable=False, log=print)
    app = demo.build_app(catalog)
    app.launch(**demo.launch_options(port=None), prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{app.server_port}/"
    app.close()


def test_the_first_screen_captions_a_photo_with_the_shipped_model(shipped_page_url):
    from captioner.release import DEFAULT_MODEL, from_pretrained

    image_path = REPO / "examples" / "images" / "photo_chelsea.jpg"
    model = from_pretrained(DEFAULT_MODEL)
    expected = model.caption([load_image(image_path)])[0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(shipped_page_url)
        assert "people, dogs and outdoor scenes" in page.locator("#model-summary").inner_text()
        page.locator("#single-image input[type=file]").set_input_files(str(image_path))
        page.locator("#single-image img").first.wait_for(state="visible")
        page.locator("#caption-button").click()
        caption_box = page.locator("#caption-text textarea")
        page.wait_for_function("element => element.value.trim().length > 0", arg=caption_box.element_handle())
        caption = caption_box.input_value()
        browser.close()
    assert caption == expected
    assert set(caption.split()) <= set(model.vocab.words) - set(SPECIAL_TOKENS), caption
