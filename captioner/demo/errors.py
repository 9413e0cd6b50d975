"""The demo's answer to a request it cannot serve: one line with a message, in the page and the API.

Gradio checks a request before our handlers see it (the number of inputs, a slider's bounds, a
dropdown's choices, an uploaded file's path) and raises there; it prints a full traceback for each of
those refusals, and errors other than `gr.Error` reach an API caller as `{"error": null}` when
`show_error` is off (it is: an unexpected error's text may name server paths). `RefusingBlocks`:

- a refusal of the input (before any handler runs) becomes a `gr.Error` with its first useful line
  and no traceback in the log; Gradio's text never reaches the caller with a server path in it (a
  file that was never uploaded is answered in our words, and any other absolute path is cut out);
- an unexpected error inside a handler is a bug: its traceback is logged once, and the caller gets a
  message that says so, without the error's own text.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError

LOG = logging.getLogger("captioner.demo")
INTERNAL_ERROR = "The server could not answer this request (an internal error, logged on the server)."
MAX_MESSAGE = 300  # characters of a refusal shown to the caller
NOT_UPLOADED = "a file input names a file that was not uploaded to this demo"
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[\\/][^\s'\"(),]*")  # /srv/app/x.jpg, C:\\x.jpg


class RefusingBlocks(gr.Blocks):
    """gr.Blocks whose every failed request carries a message and logs at most what a person needs."""

    async def preprocess_data(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().preprocess_data(*args, **kwargs)
        except gr.Error as error:
            raise gr.Error(error.message, print_exception=False) from None
        except Exception as error:  # wrong count or type of inputs, a path that was never uploaded, ...
            raise gr.Error(refusal_line(error), print_exception=False) from None

    async def process_api(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().process_api(*args, **kwargs)
        except gr.Error:
            raise
        except Exception:
            LOG.exception("a demo request failed")  # a bug: the one traceback, for whoever runs the server
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None


def refusal_line(error: Exception) -> str:
    """One line about an input Gradio refused: the line that says what was expected, else the first."""
    if isinstance(error, InvalidPathError):  # Gradio's text names the server's folders
        return f"invalid request: {NOT_UPLOADED}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    expected = [line for line in lines if line.startswith("Expected")]
    line = ABSOLUTE_PATH.sub("<path>", (expected or lines or [type(error).__name__])[0])
    return f"invalid request: {line}"[:MAX_MESSAGE]
