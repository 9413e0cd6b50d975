"""The demo's "Where it looked" view: for the caption it produced, one panel per word with that word's
attention weights over the image (captioner/attention_maps.py, the figure the caption command writes).

A Show-and-Tell model reads the image once as one vector, so it has no weights to show: the view says
so in a sentence instead of drawing an empty figure.
"""
from __future__ import annotations

import torch
from matplotlib.figure import Figure

from captioner.attention_maps import NO_ATTENTION, has_attention, plot_attention, trace_attention
from captioner.decoding import Generation
from captioner.model import Captioner

EXPLANATION = (
    "Before each word, the decoder weighs the regions of the encoder's feature map (soft attention, "
    "Xu et al. 2015): the weights α of a word sum to 1 over the regions. Each panel lays one word's weights "
    "over the image, upsampled and smoothed (red: looked here), with the probability the model gave that word."
)


def attention_view(model: Captioner, pixels: torch.Tensor, generation: Generation, caption: str) -> tuple[str, Figure | None]:
    """-> (Markdown header, the per-word figure or None for a model without attention).
    pixels (1, 3, S, S) uint8: the image the caption was generated from."""
    if not has_attention(model):
        return f"**Caption:** {caption}  \n{NO_ATTENTION}", None
    trace = trace_attention(model, pixels, generation.token_ids[0], generation.finished[0])
    query = "h_{t-1} (Xu et al.)" if model.config.attention_query == "previous" else "h_t (Lu et al.)"
    side = trace.weights.shape[1]
    header = (f"**Caption:** {caption}  \n*attention:* queried by {query}, over a {side}×{side} grid of regions; "
              f"{len(trace.words)} panels, one per word")
    return header, plot_attention(trace)
