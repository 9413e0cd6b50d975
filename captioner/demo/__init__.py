"""The web demo (`python demo.py`).

    app.py        the Gradio page and its API: layout, request handlers, launch options
    service.py    what the handlers do, without Gradio: model catalog, a request's decoding, captions
    uploads.py    uploads read one at a time within a pixel budget; the upload cache bounded in bytes
    attention.py  "Where it looked": each word's attention weights over the image (captioner/attention_maps.py)
    gates.py      "Inside the LSTM": the gates and cells recorded while a caption is replayed, and their plots
    errors.py     every failed request answers with a one-line message; refusals log no traceback

May import: captioner.attention_maps, captioner.checkpoint, captioner.cli, captioner.config,
captioner.decoding, captioner.devices, captioner.images, captioner.model, captioner.model_card,
captioner.modes, captioner.release, captioner.release_format, captioner.replay.
Nothing else in captioner imports the demo.
"""
