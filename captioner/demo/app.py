"""Web demo: caption one image or many, see the beam's alternatives, where the model looked, and inside the LSTM.

    python demo.py                                   # the shipped photo model and every run under runs/
    python demo.py --checkpoint runs/shapes/best.pt --port 7860
    python demo.py --runs-dir /data/runs --host 0.0.0.0   # other machines may connect: your choice
    GRADIO_SERVER_PORT=7999 GRADIO_SERVER_NAME=0.0.0.0 python demo.py   # Gradio's own variables work too

Address: an explicit --host/--port wins, then GRADIO_SERVER_NAME/GRADIO_SERVER_PORT, then 127.0.0.1:7860.
Safe by default: binds 127.0.0.1 unless told otherwise, never creates a public share link,
refuses uploads over 10 MB, keeps a bounded queue with limited concurrency, and has no flagging.
Every upload is decoded by `captioner.images.load_image`, the loader training uses; a bad one gets a
one-line `gr.Error` naming the file, with no traceback or server path, and the next request works.

API (gradio_client): `/caption` (image, beam size, max length, decoding, temperature, model) -> str,
`/caption_batch` (files, ...) -> (gallery, notes), `/attention` (image, ...) -> (header, plot),
`/inside` (image, ...) -> plots, `/model_summary`.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spinning on a shared CPU
# Before PIL loads: image memory in 64 MB blocks, above glibc's 32 MB mmap ceiling, so a decoded upload's
# memory returns to the system when freed; smaller blocks stay in each worker thread's malloc arena (~300 MB).
os.environ.setdefault("PILLOW_BLOCK_SIZE", "64m")
import gradio as gr  # noqa: E402
import torch  # noqa: E402

from captioner.checkpoint import CheckpointError  # noqa: E402
from captioner.cli import OneLineParser, check_numbers  # noqa: E402
from captioner.config import RANGES  # noqa: E402
from captioner.demo import gates  # noqa: E402
from captioner.demo.attention import EXPLANATION as ATTENTION_EXPLANATION  # noqa: E402
from captioner.demo.attention import attention_view  # noqa: E402
from captioner.demo.errors import RefusingBlocks  # noqa: E402
from captioner.demo.service import (  # noqa: E402
    DECODING_MODES,
    MAX_BEAM_SIZE,
    MAX_CAPTION_LENGTH,
    DemoInputError,
    ModelCatalog,
    alternatives_table,
    caption_images,
    caption_pixels,
    caption_text,
    checkpoint_label,
    dataset_format,
    find_checkpoints,
    model_summary,
    requested_decoding,
)
from captioner.demo.uploads import MAX_BATCH_IMAGES, bound_upload_cache, read_batch, read_upload  # noqa: E402
from captioner.devices import DeviceError, available_device  # noqa: E402
from captioner.images import ImageError  # noqa: E402
from captioner.model import Captioner  # noqa: E402
from captioner.release import DEFAULT_MODEL, release_directory, shipped_models  # noqa: E402

TRAIN_COMMAND = "python train.py --config configs/shapes.yaml"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "images"
MAX_FILE_SIZE = "10mb"  # uploads above this are refused by Gradio before any decoding
QUEUE_SIZE = 16  # requests waiting beyond this are turned away ("queue is full")
CONCURRENCY = 2  # requests computed at once (the target machine has 2 cores)
DELETE_CACHE = (600, 3600)  # every 10 minutes, uploads older than an hour leave Gradio's cache (no unbounded growth)
MAX_UPLOAD_CACHE_BYTES = 320 * 2**20  # and the oldest leave as soon as all together pass this: two full batches
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860  # this machine only; Gradio's usual port


class UploadedImage(gr.Image):
    """gr.Image that hands the uploaded file to our loader untouched: gr.Image's own preprocess opens it
    with PIL first, which would bypass the pixel cap and turn a bad upload into an unexplained error."""

    is_template = True  # rendered by the ordinary Image front end

    def preprocess(self, payload: Any) -> str | None:  # payload: gradio's ImageData, or None when empty
        return None if payload is None or payload.path is None else str(payload.path)


REFUSED = (ImageError, DemoInputError, CheckpointError)
BEAM_SEARCH = DECODING_MODES[0]


@contextmanager
def shown_to_user() -> Iterator[None]:
    """Refusals become a one-line gr.Error for the page. Loader and input errors already name the
    file, never a server path; a checkpoint error would, so it is replaced by a plain sentence.
    Anything else stays a server-side error, which the page shows without its message."""
    try:
        yield
    except REFUSED as error:
        message = str(error).splitlines()[0]
        if isinstance(error, CheckpointError):
            message = "The selected model could not be loaded; see the server log."
        raise gr.Error(message, print_exception=False) from None


class Handlers:
    """The request functions behind the page and the API. Sliders send floats; the defaults let a
    gradio_client caller pass just the image (and the beam size)."""

    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog

    def prepare(self, model: str | None, beam_size: float, max_length: float, decoding: str | None,
                temperature: float) -> tuple:
        """(the chosen model, its own decoding with the request's choices, validated). A raw API call may
        send NaN, which Gradio's slider bounds let through: it is refused here, by name."""
        chosen = self.catalog.get(model or self.catalog.labels[0])
        return chosen, requested_decoding(chosen, decoding or BEAM_SEARCH, _whole(beam_size, "beam size"),
                                          _whole(max_length, "max length"), float(temperature))

    def caption(self, image_path: str | None, beam_size: float = 3, max_length: float = 20,
                decoding: str = BEAM_SEARCH, temperature: float = 1.0, model: str | None = None) -> tuple:
        """-> (caption, alternatives table); the API returns the caption only (the table is gr.State)."""
        with shown_to_user():
            chosen, options = self.prepare(model, beam_size, max_length, decoding, temperature)
            generation = caption_images(chosen, [read_upload(image_path)], options)[0]
        return caption_text(generation), alternatives_table(generation)

    def caption_batch(self, files: list[str] | None, beam_size: float = 3, max_length: float = 20,
                      decoding: str = BEAM_SEARCH, temperature: float = 1.0, model: str | None = None) -> tuple:
        """-> (gallery of (thumbnail, "name: caption"), notes naming any file that was skipped)."""
        with shown_to_user():
            chosen, options = self.prepare(model, beam_size, max_length, decoding, temperature)
            batch = read_batch(chosen, [str(file) for file in (files or [])])
        generations = caption_pixels(chosen, batch.pixels, options)
        gallery = [(thumbnail, f"{name}: {caption_text(generation)}")
                   for thumbnail, name, generation in zip(batch.thumbnails, batch.names, generations)]
        notes = ("\n".join(f"- skipped {reason}" for reason in batch.skipped)
                 or f"Captioned {len(batch.names)} image(s).")
        return gallery, notes

    def look_inside(self, image_path: str | None, beam_size: float = 3, max_length: float = 20,
                    decoding: str = BEAM_SEARCH, temperature: float = 1.0, model: str | None = None) -> tuple:
        """-> (caption header, gate plot, cell heatmap, word probabilities)."""
        with shown_to_user():
            chosen, options = self.prepare(model, beam_size, max_length, decoding, temperature)
            pixels = chosen.pixels([read_upload(image_path)])  # (1, 3, S, S)
        generation = caption_pixels(chosen, pixels, options)[0]
        trace = gates.trace_caption(chosen, pixels, generation.token_ids[0], generation.finished[0])
        header = f"**Caption:** {caption_text(generation)}  \n*cell:* `{trace.cell}`, {len(trace.layers)} layer(s)"
        return header, gates.plot_gates(trace), gates.plot_cells(trace), gates.plot_probabilities(trace)

    def look_where(self, image_path: str | None, beam_size: float = 3, max_length: float = 20,
                   decoding: str = BEAM_SEARCH, temperature: float = 1.0, model: str | None = None) -> tuple:
        """-> (caption header, per-word attention figure, or None with a sentence for a model without attention)."""
        with shown_to_user():
            chosen, options = self.prepare(model, beam_size, max_length, decoding, temperature)
            pixels = chosen.pixels([read_upload(image_path)])  # (1, 3, S, S)
        generation = caption_pixels(chosen, pixels, options)[0]
        return attention_view(chosen, pixels, generation, caption_text(generation))

    def describe(self, model: str | None = None) -> str:
        """The model summary (Markdown) for the dropdown's choice."""
        label = model or self.catalog.labels[0]
        with shown_to_user():
            return model_summary(self.catalog.get(label), self.catalog.checkpoints[label])


def _whole(value: float, name: str) -> int:
    if not math.isfinite(value):
        raise DemoInputError(f"{name}: expected a number, got {value}")
    return int(value)


def build_app(models: ModelCatalog | Captioner) -> gr.Blocks:
    """The page. `models` is a ModelCatalog, or one Captioner already in memory."""
    catalog = models if isinstance(models, ModelCatalog) else ModelCatalog.single(models)
    handlers = Handlers(catalog)
    with RefusingBlocks(title="captioner", analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        bound_upload_cache(app, MAX_UPLOAD_CACHE_BYTES)
        gr.Markdown("# captioner\nA CNN encoder feeding a hand-written, explicit LSTM decoder: Show and Tell, "
                    "or with soft attention Show, Attend and Tell.")
        with gr.Row():
            model = gr.Dropdown(catalog.labels, value=catalog.labels[0], scale=1, elem_id="model-choice",
                                label="Model (the shipped ones and the runs' checkpoints)")
            summary = gr.Markdown(handlers.describe(catalog.labels[0]), elem_id="model-summary")
        with gr.Tab("Caption", id="caption-tab"):
            image, settings = _caption_tab(handlers, model)
        with gr.Tab("Where it looked", id="attention-tab"):
            _attention_tab(handlers, image, settings)
        with gr.Tab("Inside the LSTM", id="inside-tab"):
            _inside_tab(handlers, image, settings)
        model.change(handlers.describe, model, summary, api_name="model_summary")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return app


def example_rows(catalog: ModelCatalog) -> list[list[str]]:
    """[image, model label] for each example image, with the first model that can caption it: the
    photos with a model trained on photos, the shapes scenes with one trained on them (else left out)."""
    formats = {label: dataset_format(path) for label, path in catalog.checkpoints.items()}
    photo_model = next((label for label, name in formats.items() if name not in (None, "shapes")), None)
    shapes_model = next((label for label, name in formats.items() if name == "shapes"), None)
    rows = []
    for path in sorted(EXAMPLES_DIR.glob("*.jpg")):
        label = shapes_model if path.name.startswith("shapes_") else photo_model
        rows += [[str(path), label]] if label else []
    return rows


def _caption_tab(handlers: Handlers, model: gr.Dropdown) -> tuple[gr.Image, list]:
    with gr.Row():
        with gr.Column(scale=1):
            image = UploadedImage(type="filepath", label="Image (upload, drop or paste)", height=300,
                                  sources=["upload", "clipboard"], elem_id="single-image")
            examples = example_rows(handlers.catalog)
            if examples:
                gr.Examples(examples, inputs=[image, model], label="Examples (each with a model that knows it)")
        with gr.Column(scale=1):
            decoding = gr.Radio(list(DECODING_MODES), value=DECODING_MODES[0], label="Decoding")
            beam = gr.Slider(1, MAX_BEAM_SIZE, value=3, step=1, label="Beam size (beam search)")
            length = gr.Slider(1, MAX_CAPTION_LENGTH, value=20, step=1, label="Max length (words)")
            temperature = gr.Slider(0.1, 3.0, value=1.0, step=0.1, label="Temperature (sampling)")
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
            output = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
            alternatives = gr.Dataframe(headers=["rank", "caption", "log p", "finished"], label="Beam alternatives",
                                        interactive=False, wrap=True, column_widths=["10%", "60%", "15%", "15%"],
                                        elem_id="alternatives")
    settings = [beam, length, decoding, temperature, model]
    table = gr.State()
    button.click(handlers.caption, [image, *settings], [output, table], api_name="caption").then(
        lambda rows: rows, table, alternatives, api_visibility="private")
    with gr.Accordion("Many images at once", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label=f"Images (up to {MAX_BATCH_IMAGES})",
                        elem_id="batch-files")
        batch_button = gr.Button("Caption all", elem_id="batch-button")
        gallery = gr.Gallery(label="Captions", columns=4, elem_id="batch-gallery")
        notes = gr.Markdown()
        batch_button.click(handlers.caption_batch, [files, *settings], [gallery, notes], api_name="caption_batch")
    return image, settings


def _attention_tab(handlers: Handlers, image: gr.Image, settings: list) -> None:
    gr.Markdown("Uses the image and decoding settings of the **Caption** tab. " + ATTENTION_EXPLANATION,
                elem_id="attention-explanation")
    button = gr.Button("Show where it looked", variant="primary", elem_id="attention-button")
    header = gr.Markdown(elem_id="attention-caption")
    plot = gr.Plot(label="Attention per word", format="png", elem_id="attention-plot")
    button.click(handlers.look_where, [image, *settings], [header, plot], api_name="attention")


def _inside_tab(handlers: Handlers, image: gr.Image, settings: list) -> None:
    gr.Markdown("Uses the image and decoding settings of the **Caption** tab. " + gates.EXPLANATION,
                elem_id="inside-explanation")
    button = gr.Button("Look inside", variant="primary", elem_id="inside-button")
    header = gr.Markdown(elem_id="inside-caption")
    gate_plot = gr.Plot(label="Gates: mean activation per word and layer", format="png", elem_id="gate-plot")
    cells = gr.Plot(label="Cells: the most active units", format="png", elem_id="cell-plot")
    probabilities = gr.Plot(label="How sure was each word?", format="png", elem_id="probability-plot")
    button.click(handlers.look_inside, [image, *settings], [header, gate_plot, cells, probabilities], api_name="inside")


def server_address(host: str | None, port: int | None, environment: dict[str, str]) -> tuple[str, int]:
    """Explicit flags win, then Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, then 127.0.0.1:7860."""
    host = host or environment.get("GRADIO_SERVER_NAME", "").strip() or DEFAULT_HOST
    if port is None:
        text = environment.get("GRADIO_SERVER_PORT", "").strip()
        if text and not text.isdigit():
            raise ValueError(f"GRADIO_SERVER_PORT={text[:20]!r}: expected a port number from 1 to 65535")
        port = int(text) if text else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}: expected a port number from 1 to 65535")
    return host, port


def launch_options(host: str = DEFAULT_HOST, port: int | None = None) -> dict:
    """Keyword arguments for `launch`: the safe defaults, shared by main() and the tests."""
    return {"server_name": host, "server_port": port, "share": False, "max_file_size": MAX_FILE_SIZE,
            "show_error": False, "ssr_mode": False, "enable_monitoring": False, "mcp_server": False, "pwa": False,
            "run_history": False, "footer_links": ["api", "settings"]}  # no /monitoring, no MCP, no saved runs


def find_models(checkpoint: str | None, runs_dir: str, device: str) -> ModelCatalog:
    """--checkpoint first (when given), then the shipped models (the photo model first), then every
    run under --runs-dir (shapes/best.pt first)."""
    runs = {checkpoint_label(path, runs_dir): path for path in find_checkpoints(runs_dir)}
    if "shapes/best.pt" in runs:
        runs = {"shapes/best.pt": runs.pop("shapes/best.pt"), **runs}
    names = sorted(shipped_models(), key=lambda name: name != DEFAULT_MODEL)
    found = {**{name: release_directory(name) for name in names}, **runs}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        label = checkpoint_label(path, runs_dir)
        found = {label: path, **{key: value for key, value in found.items() if key != label}}
    if not found:
        raise FileNotFoundError(f"no shipped model and no checkpoint (best.pt or last.pt) under {runs_dir}/")
    return ModelCatalog(found, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Caption images in a web page (Gradio).")
    parser.add_argument("--checkpoint", default=None, help=f"checkpoint to show first (default: the shipped "
                        f"photo model, {DEFAULT_MODEL})")
    parser.add_argument("--runs-dir", default="runs",
                        help="offer every run's best.pt under this directory in a dropdown (default: %(default)s)")
    parser.add_argument("--host", default=None, help=f"address to bind (default: $GRADIO_SERVER_NAME, else "
                        f"{DEFAULT_HOST}, this machine only)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // CONCURRENCY),
                        help="torch CPU threads per request (default: cores / concurrent requests = %(default)s)")
    args = parser.parse_args(argv)
    check_numbers(parser, args, {"threads": RANGES["train.threads"]})
    try:
        host, port = server_address(args.host, args.port, dict(os.environ))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        catalog = find_models(args.checkpoint, args.runs_dir, str(available_device(args.device)))
        catalog.load_first(skip_unusable=not args.checkpoint, log=lambda line: print(line, file=sys.stderr))
    except FileNotFoundError as error:
        print(f"error: {error}. Train one first:\n    {TRAIN_COMMAND}", file=sys.stderr)
        return 2
    except (CheckpointError, DeviceError) as error:  # a named --checkpoint, or every run, does not load
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))  # CONCURRENCY requests at once share the cores
    build_app(catalog).launch(**launch_options(host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
