"""Where the model looked: each word of a caption with the attention weights that chose it, over the image.

Show, Attend and Tell (Xu et al. 2015, fig. 3) draws, for every word w_t, the weights α_t of the
step that emitted it over the encoder's h x w map, upsampled to the image and laid over it:

    α_t = softmax_i(e_t)                     (L,) with L = h·w, Σ_i α_ti = 1   (captioner/decoders/attention.py)
    A_t = bilinear(α_t as (h, w)) to (S, S)  smooth, for the picture only; the test reads α_t itself
    p_t = p(w_t | image, w_<t)               shown beside the word

`trace_attention` replays a finished caption through the decoder while it records α_t
(captioner/replay.py, the replay the gate view uses too), so it works for both attention queries
(h_{t-1}, Xu et al.; h_t, Lu et al.) and for any search (greedy, beam, sampling). The demo and `python -m captioner.caption --attention-maps DIR` draw the same
`plot_attention` figure (a `matplotlib.figure.Figure`, no pyplot global state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from captioner.files import write_atomically
from captioner.model import Captioner
from captioner.replay import replay_caption

COLUMNS = 5  # word panels per row of the figure
NO_ATTENTION = ("This model has no attention (model.attention=false, Show and Tell): it reads the whole image "
                "once as one vector, so there is no map of where it looked.")


@dataclass
class AttentionTrace:
    """One caption and, for each of its words (<end> included), where the model looked."""

    words: list[str]  # the word emitted at each step
    probabilities: np.ndarray  # (T,) p(word | image, earlier words)
    weights: np.ndarray  # (T, h, w) α_t over the encoder's grid; each (h, w) map sums to 1
    image: np.ndarray  # (S, S, 3) uint8: the image as the encoder saw it (after resize and crop)


def has_attention(model: Captioner) -> bool:
    return model.config.attention


def trace_attention(model: Captioner, pixels: torch.Tensor, token_ids: list[int], finished: bool = True) -> AttentionTrace:
    """Replay `token_ids` (without <start>/<end>) for one preprocessed image (1, 3, S, S) uint8 and
    record α_t at every step. The model must have attention (`has_attention`)."""
    if not has_attention(model):
        raise ValueError(NO_ATTENTION)
    replay = replay_caption(model, pixels, token_ids, model.decoder, finished)
    weights = torch.cat(replay.steps).float().cpu().numpy()  # (T, L)
    side = math.isqrt(weights.shape[1])
    if side * side != weights.shape[1]:
        raise ValueError(f"attention over {weights.shape[1]} regions: expected a square grid")
    return AttentionTrace(replay.words, replay.probabilities, weights.reshape(len(replay.words), side, side),
                          pixels[0].permute(1, 2, 0).cpu().numpy())


def upsample(weights: np.ndarray, side: int) -> np.ndarray:
    """One word's (h, w) weights -> (side, side), bilinear: the smooth map drawn over the image."""
    grid = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))[None, None]  # (1, 1, h, w)
    return F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()  # (side, side)


def plot_attention(trace: AttentionTrace, columns: int = COLUMNS) -> Figure:
    """One panel per word: the image, that word's upsampled α_t laid over it, the word and p(word).
    One colour scale for all panels (0 to the largest weight), so the panels compare."""
    count = len(trace.words)
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(2.2 * columns + 0.8, 2.4 * rows), dpi=100)
    axes = figure.subplots(rows, columns, squeeze=False)
    side = trace.image.shape[0]
    top = float(trace.weights.max()) if count else 1.0
    heat = None
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index >= count:
            continue
        axis.imshow(trace.image, extent=(0, side, side, 0))
        heat = axis.imshow(upsample(trace.weights[index], side), cmap="jet", alpha=0.5, vmin=0.0, vmax=top,
                           extent=(0, side, side, 0))
        axis.set_title(f"{trace.words[index]}  ({trace.probabilities[index]:.2f})", fontsize=10)
    if heat is not None:
        figure.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="attention weight α")
    return figure


def save_attention_figure(trace: AttentionTrace, path: str | Path) -> None:
    """The figure as a PNG, written atomically (a crash leaves no half-written image)."""
    figure = plot_attention(trace)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png"))
