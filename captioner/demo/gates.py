"""Inside the LSTM: record the gates and cells while a caption is read back, and plot them.

The chapter explains the LSTM through its gates ("think of i, f, o as boolean variables") and its
cells ("best thought as counters"). `trace_caption` replays a finished caption through the decoder one
word at a time while its StackedLSTM records (captioner/replay.py, the replay the attention maps use
too), and keeps for every step and layer what the cell computed (Hochreiter & Schmidhuber 1997, with a
forget gate):

    i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)     input gate: let g_t into the cell?
    f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)     forget gate: keep c_{t-1}?
    o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)     output gate: show the cell in h_t?
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t            the cell: a counter, kept, added to or reset
    p_t = softmax(W_out h_t)[w_t]              the probability of the word that was chosen

Replaying the chosen words gives exactly the activations that produced them, whichever search chose
them, and any decoder around a StackedLSTM works (Show and Tell, or Show, Attend and Tell).
Each step is labelled with the word it chose, ending with <end> when the caption finished.

Three matplotlib figures follow, built with `matplotlib.figure.Figure` (no pyplot global state, so
the demo's worker threads cannot draw into each other's figures). Every cell variant works: gru has
gates r, z and no cell (its heatmap shows h_t), rnn has neither (its gate plot shows mean |h_t|).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from captioner.model import Captioner
from captioner.replay import replay_caption

GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "o": "output gate o",
              "r": "reset gate r", "z": "update gate z"}  # shown when the cell has them, in this order
EXPLANATION = (
    "Each gate is a soft boolean switch: a value near 1 means *yes* (let the new candidate g in, keep the "
    "old memory, show the memory in h) and near 0 means *no*, so the gate plot shows, word by word, what "
    "the network chose to write, keep and reveal. "
    "Each cell is best thought of as a counter, c_t = f ⊙ c_{t-1} + i ⊙ g_t: the heatmap shows the cells "
    "that moved most, counting up (red) or down (blue) as the caption is written, and the bars show how "
    "sure the model was of each word it picked."
)


@dataclass
class Trace:
    """What the decoder did for one caption: one entry per generated word (<end> included)."""

    cell: str  # the recurrent cell of the model: rnn | lstm | peephole | coupled | gru
    words: list[str]  # the word chosen at each step
    probabilities: np.ndarray  # (T,) p(chosen word | image, earlier words)
    layers: list[dict[str, np.ndarray]]  # per layer: activation name -> (T, H) values


def trace_caption(model: Captioner, pixels: torch.Tensor, token_ids: list[int], finished: bool = True) -> Trace:
    """Replay `token_ids` (without <start>/<end>) for one preprocessed image (1, 3, S, S) uint8 and keep,
    per layer, each activation of the decoder's StackedLSTM at every word."""
    replay = replay_caption(model, pixels, token_ids, model.decoder.rnn, finished)
    steps = replay.steps
    layers = [{name: torch.cat([step[layer][name] for step in steps]).cpu().numpy()  # (T, H)
               for name in steps[0][layer]} for layer in range(len(steps[0]))] if steps else []
    return Trace(model.config.cell, replay.words, replay.probabilities, layers)


def has_cell_state(trace: Trace) -> bool:
    """rnn and gru carry only h; the LSTM family records c."""
    return bool(trace.layers) and "c" in trace.layers[0]


def most_active_units(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` units with the largest mean |value| over the steps, most active first."""
    activity = np.abs(values).mean(axis=0)  # (H,)
    return np.argsort(-activity, kind="stable")[: min(count, values.shape[1])]


def plot_gates(trace: Trace) -> Figure:
    """Per layer: the mean activation of each gate at each word (mean |h_t| for rnn, which has none)."""
    figure, axes = _layer_axes(len(trace.layers), height=2.3)
    steps = np.arange(len(trace.words))
    for layer, (axis, values) in enumerate(zip(axes, trace.layers)):
        gates = [name for name in GATE_NAMES if name in values]
        for name in gates:
            axis.plot(steps, values[name].mean(axis=1), marker="o", label=GATE_NAMES[name])
        if not gates:
            axis.plot(steps, np.abs(values["h"]).mean(axis=1), marker="o", color="grey", label="mean |h_t|")
            axis.set_title(f"layer {layer + 1}: the {trace.cell} cell has no gates; mean |h_t| instead", fontsize=9)
        else:
            axis.set_title(f"layer {layer + 1}: mean gate activation per word", fontsize=9)
            axis.set_ylim(0, 1)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)  # beside, not over
        _label_words(axis, trace.words)
    figure.tight_layout()
    return figure


def plot_cells(trace: Trace, units: int = 16) -> Figure:
    """Per layer: a heatmap of c_t (h_t without a cell) for the most active units, words across."""
    name = "c" if has_cell_state(trace) else "h"
    figure, axes = _layer_axes(len(trace.layers), height=0.18 * units + 1.2)
    for layer, (axis, values) in enumerate(zip(axes, trace.layers)):
        chosen = most_active_units(values[name], units)
        grid = values[name][:, chosen].T  # (units, T): one row per unit, one column per word
        limit = float(np.abs(grid).max()) or 1.0
        image = axis.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        axis.set_yticks(range(len(chosen)), [str(unit) for unit in chosen], fontsize=6)
        axis.set_ylabel("unit", fontsize=8)
        what = "cell state c_t" if name == "c" else f"hidden state h_t (the {trace.cell} cell has no c)"
        axis.set_title(f"layer {layer + 1}: {what}, {len(chosen)} most active units", fontsize=9)
        _label_words(axis, trace.words)
        figure.colorbar(image, ax=axis, fraction=0.03, pad=0.01)
    figure.tight_layout()
    return figure


def plot_probabilities(trace: Trace) -> Figure:
    """The probability the model gave each word it chose."""
    figure = Figure(figsize=(8, 2.4), dpi=100)
    axis = figure.add_subplot()
    steps = np.arange(len(trace.words))
    bars = axis.bar(steps, trace.probabilities, color="tab:green")
    axis.bar_label(bars, labels=[f"{p:.2f}" for p in trace.probabilities], fontsize=7)
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("p(word)", fontsize=8)
    axis.set_title("next-word probability of the chosen word", fontsize=9)
    _label_words(axis, trace.words)
    figure.tight_layout()
    return figure


def _layer_axes(num_layers: int, height: float) -> tuple[Figure, list]:
    figure = Figure(figsize=(8, height * max(num_layers, 1)), dpi=100)
    return figure, list(np.atleast_1d(figure.subplots(max(num_layers, 1), 1, squeeze=False)[:, 0]))


def _label_words(axis, words: list[str]) -> None:
    axis.set_xticks(range(len(words)), words, rotation=45, ha="right", fontsize=8)
