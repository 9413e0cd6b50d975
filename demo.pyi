"""Web demo: caption one image or many, see the beam's alternatives, and look inside the LSTM.

    python demo.py                                   # every checkpoint under runs/, a dropdown picks one
    python demo.py --checkpoint runs/shapes/best.pt --port 7860
    python demo.py --runs-dir /data/runs --host 0.0.0.0   # other machines may connect: your choice

Safe by default: binds 127.0.0.1 unless --host says otherwise, never creates a public share link,
refuses uploads over 10 MB, keeps a bounded queue with limited concurrency, and has no flagging.
Every upload is decoded by `captioner.images.load_image`, the loader training uses; a bad one gets a
one-line `gr.Error` naming the file, with no traceback or server path, and the next request works.

API (gradio_client): `/caption` (image, beam size, max length, decoding, temperature, model) -> str,
`/caption_batch` (files, ...) -> (gallery, notes), `/inside` (image, ...) -> plots, `/model_summary`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gradio as gr

from captioner import CheckpointError
from captioner import inside
from captioner.demo_support import (DECODING_MODES, MAX_BATCH_IMAGES, MAX_BEAM_SIZE, MAX_CAPTION_LENGTH,
                                    DecodingOptions, DemoInputError, ModelCatalog, alternatives_table,
                                    caption_images, caption_pixels, caption_text, checkpoint_label, find_checkpoints,
                                    model_summary, pixels_of, read_upload)
from captioner.images import ImageError

TRAIN_COMMAND = "python train.py --config configs/shapes.yaml"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples" / "images"
MAX_FILE_SIZE = "10mb"  # uploads above this are refused by Gradio before any decoding
QUEUE_SIZE = 16  # requests waiting beyond this are turned away ("queue is full")
CONCURRENCY = 2  # requests computed at once (the target machine has 2 cores)

from gradio.events import Dependency

class UploadedImage(gr.Image):
    """gr.Image that hands the uploaded file to our loader untouched: gr.Image's own preprocess opens it
    with PIL first, which would bypass the pixel cap and turn a bad upload into an unexplained error."""

    is_template = True  # rendered by the ordinary Image front end

    def preprocess(self, payload) -> str | None:  # payload: gradio's ImageData, or None when empty
        return None if payload is None or payload.path is None else str(payload.path)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def refusal(error: Exception) -> gr.Error:
    """A one-line message for the page; loader and input errors already name the file, never a path."""
    if isinstance(error, CheckpointError):
        return gr.Error("The selected model could not be loaded; see the server log.", print_exception=False)
    return gr.Error(str(error).splitlines()[0], print_exception=False)


REFUSED = (ImageError, DemoInputError, CheckpointError)


def make_handlers(catalog: ModelCatalog) -> dict:
    """The request functions, closed over the catalog. Settings arrive as sliders' floats."""

    def options(beam_size, max_length, decoding, temperature) -> DecodingOptions:
        return DecodingOptions(decoding or DECODING_MODES[0], int(beam_size), int(max_length), float(temperature))

    def caption(image_path, beam_size=3, max_length=20, decoding=DECODING_MODES[0], temperature=1.0, model=None):
        try:
            chosen = catalog.get(model or catalog.labels[0])
            settings = options(beam_size, max_length, decoding, temperature)
            generation = caption_images(chosen, [read_upload(image_path)], settings)[0]
        except REFUSED as error:
            raise refusal(error) from None
        return caption_text(generation), alternatives_table(generation)

    def caption_batch(files, beam_size=3, max_length=20, decoding=DECODING_MODES[0], temperature=1.0, model=None):
        try:
            paths = [str(file) for file in (files or [])]
            if not paths:
                raise DemoInputError("Please upload one or more images first.")
            if len(paths) > MAX_BATCH_IMAGES:
                raise DemoInputError(f"{len(paths)} files: at most {MAX_BATCH_IMAGES} images per batch")
            chosen = catalog.get(model or catalog.labels[0])
            settings = options(beam_size, max_length, decoding, temperature)
            images, names, skipped = [], [], []
            for path in paths:
                try:
                    images.append(read_upload(path))
                    names.append(Path(path).name)
                except ImageError as error:  # one bad file does not spoil the batch
                    skipped.append(str(error))
            if not images:
                raise DemoInputError(f"No image could be read: {skipped[0]}")
            generations = caption_images(chosen, images, settings)
        except REFUSED as error:
            raise refusal(error) from None
        gallery = [(_thumbnail(image), f"{name}: {caption_text(generation)}")
                   for image, name, generation in zip(images, names, generations)]
        notes = "\n".join(f"- skipped {reason}" for reason in skipped) or f"Captioned {len(images)} image(s)."
        return gallery, notes

    def look_inside(image_path, beam_size=3, max_length=20, decoding=DECODING_MODES[0], temperature=1.0, model=None):
        try:
            chosen = catalog.get(model or catalog.labels[0])
            settings = options(beam_size, max_length, decoding, temperature)
            pixels = pixels_of(chosen, [read_upload(image_path)])  # (1, 3, S, S)
        except REFUSED as error:
            raise refusal(error) from None
        generation = caption_pixels(chosen, pixels, settings)[0]
        trace = inside.trace_caption(chosen, pixels, generation.token_ids[0], generation.finished[0])
        header = f"**Caption:** {caption_text(generation)}  \n*cell:* `{trace.cell}`, {len(trace.layers)} layer(s)"
        return header, inside.plot_gates(trace), inside.plot_cells(trace), inside.plot_probabilities(trace)

    def describe(model=None):
        try:
            label = model or catalog.labels[0]
            return model_summary(catalog.get(label), catalog.checkpoints[label])
        except REFUSED as error:
            raise refusal(error) from None

    return {"caption": caption, "caption_batch": caption_batch, "inside": look_inside, "describe": describe}


def _thumbnail(image, side: int = 256):
    copy = image.copy()
    copy.thumbnail((side, side))
    return copy


def build_app(models) -> gr.Blocks:
    """The page. `models` is a ModelCatalog, or one Captioner already in memory."""
    catalog = models if isinstance(models, ModelCatalog) else ModelCatalog.single(models)
    handlers = make_handlers(catalog)
    with gr.Blocks(title="captioner", analytics_enabled=False) as app:
        gr.Markdown("# captioner\nA CNN encoder feeding a hand-written, explicit LSTM decoder (Show and Tell).")
        with gr.Row():
            model = gr.Dropdown(catalog.labels, value=catalog.labels[0], label="Model (checkpoints under the runs directory)",
                                scale=1, elem_id="model-choice")
            summary = gr.Markdown(handlers["describe"](catalog.labels[0]), elem_id="model-summary")
        with gr.Tab("Caption", id="caption-tab"):
            image, settings = _caption_tab(handlers, model)
        with gr.Tab("Inside the LSTM", id="inside-tab"):
            _inside_tab(handlers, image, settings, model)
        model.change(handlers["describe"], model, summary, api_name="model_summary")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return app


def _caption_tab(handlers: dict, model: gr.Dropdown) -> tuple[gr.Image, list]:
    with gr.Row():
        with gr.Column(scale=1):
            image = UploadedImage(type="filepath", label="Image (upload, drop or paste)", sources=["upload", "clipboard"],
                                  height=300, elem_id="single-image")
            examples = sorted(path for path in EXAMPLES_DIR.glob("*.jpg"))
            if examples:
                gr.Examples([[str(path)] for path in examples], inputs=image, label="Examples")
        with gr.Column(scale=1):
            decoding = gr.Radio(list(DECODING_MODES), value=DECODING_MODES[0], label="Decoding")
            beam = gr.Slider(1, MAX_BEAM_SIZE, value=3, step=1, label="Beam size (beam search)")
            length = gr.Slider(1, MAX_CAPTION_LENGTH, value=20, step=1, label="Max length (words)")
            temperature = gr.Slider(0.1, 3.0, value=1.0, step=0.1, label="Temperature (sampling)")
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
            output = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
            alternatives = gr.Dataframe(headers=["rank", "caption", "log p", "finished"], label="Beam alternatives",
                                        interactive=False, elem_id="alternatives")
    settings = [beam, length, decoding, temperature, model]
    table = gr.State()
    button.click(handlers["caption"], [image, *settings], [output, table], api_name="caption").then(
        lambda rows: rows, table, alternatives, api_visibility="private")
    with gr.Accordion("Many images at once", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label=f"Images (up to {MAX_BATCH_IMAGES})",
                        elem_id="batch-files")
        batch_button = gr.Button("Caption all", elem_id="batch-button")
        gallery = gr.Gallery(label="Captions", columns=4, elem_id="batch-gallery")
        notes = gr.Markdown()
        batch_button.click(handlers["caption_batch"], [files, *settings], [gallery, notes], api_name="caption_batch")
    return image, settings


def _inside_tab(handlers: dict, image: gr.Image, settings: list, model: gr.Dropdown) -> None:
    gr.Markdown("Uses the image and decoding settings of the **Caption** tab. " + inside.EXPLANATION,
                elem_id="inside-explanation")
    button = gr.Button("Look inside", variant="primary", elem_id="inside-button")
    header = gr.Markdown(elem_id="inside-caption")
    gates = gr.Plot(label="Gates: mean activation per word and layer", elem_id="gate-plot")
    cells = gr.Plot(label="Cells: the most active units", elem_id="cell-plot")
    probabilities = gr.Plot(label="How sure was each word?", elem_id="probability-plot")
    button.click(handlers["inside"], [image, *settings], [header, gates, cells, probabilities], api_name="inside")


def launch_options(host: str = "127.0.0.1", port: int | None = None) -> dict:
    """Keyword arguments for `launch`: the safe defaults, shared by main() and the tests."""
    return {"server_name": host, "server_port": port, "share": False, "max_file_size": MAX_FILE_SIZE,
            "show_error": False, "ssr_mode": False, "enable_monitoring": False, "mcp_server": False, "pwa": False}


def find_models(checkpoint: str | None, runs_dir: str, device: str) -> ModelCatalog:
    """--checkpoint first (when given), then every run under --runs-dir."""
    found = {checkpoint_label(path, runs_dir): path for path in find_checkpoints(runs_dir)}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
        found = {checkpoint_label(path, runs_dir): path, **found}
    if not found:
        raise FileNotFoundError(f"no checkpoint (best.pt or last.pt) found under {runs_dir}/")
    default = "shapes/best.pt" if "shapes/best.pt" in found and not checkpoint else next(iter(found))
    return ModelCatalog({default: found.pop(default), **found}, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Caption images in a web page (Gradio).")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to show first (default: runs/shapes/best.pt "
                        "or the first run found under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="offer every run's best.pt under this directory (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    try:
        catalog = find_models(args.checkpoint, args.runs_dir, args.device)
        catalog.get(catalog.labels[0])  # fail now, not on the first request
    except FileNotFoundError as error:
        print(f"error: {error}. Train one first:\n    {TRAIN_COMMAND}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    build_app(catalog).launch(**launch_options(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())