"""The experiments' figures, drawn with matplotlib's Agg backend (files only, no display needed).

cells.png: validation BLEU-4, validation colour accuracy and training loss per epoch, one line per cell
(mean over seeds, band = ±1 std).
gradients.png: ‖∂L/∂h_t‖ against the distance from the loss on a log scale (at initialisation, with the
carry-gate bias raised, after training), and gradient clipping at work (norm before and after per update).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from captioner.files import write_atomically  # noqa: E402

COLOURS = {"rnn": "tab:red", "lstm": "tab:blue", "peephole": "tab:green", "coupled": "tab:purple", "gru": "tab:orange"}
DPI = 80  # with the palette below, keeps each committed PNG well under 150 KB
PALETTE_COLOURS = 128  # line plots need few colours; a palette PNG is a third of the RGBA size


def plot_cells(curves: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    """curves[cell][metric] = one list of per-epoch values per seed; metrics "val_bleu4", "val_colour", "train_loss"."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("val_bleu4", "validation BLEU-4 (greedy)"),
              ("val_colour", "validation colour accuracy % (does it look at the image?)"),
              ("train_loss", "training loss (last batch of the epoch)"))
    for axis, (metric, title) in zip(axes, panels):
        for cell, by_metric in curves.items():
            runs = [run for run in by_metric[metric] if run and None not in run]
            if not runs:
                continue
            length = min(len(run) for run in runs)
            values = np.array([run[:length] for run in runs])  # (seeds, epochs)
            epochs = np.arange(1, length + 1)
            mean, std = values.mean(axis=0), values.std(axis=0)
            axis.plot(epochs, mean, marker="o", color=COLOURS.get(cell), label=f"{cell} ({len(runs)} seeds)")
            axis.fill_between(epochs, mean - std, mean + std, color=COLOURS.get(cell), alpha=0.15)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(figure, path)


def plot_gradients(report: dict[str, Any], path: Path) -> None:
    """Three gradient-flow panels (log scale, relative to distance 0) and one clipping panel."""
    budget = report["budget"]
    figure, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    panels = (("flow_init", "at initialisation (U(±1/√H))"),
              ("flow_carry_bias", f"carry-gate bias +{budget['carry_bias']:g} (f, or z for GRU)"),
              ("flow_trained", f"after truncated-BPTT training (k={budget['chunk_length']})"))
    for axis, (key, title) in zip(axes.flat, panels):
        for result in report["cells"]:
            flow, style, label = np.array(result[key] or result["flow_init"]), "-", result["cell"]
            if result[key] is None:  # no carry gate (rnn): its initial curve, dashed, as the reference
                style, label = "--", f"{result['cell']} (no gate, as at init)"
            axis.semilogy(np.arange(len(flow)), flow / flow[0], style, color=COLOURS.get(result["cell"]), label=label)
        if key == "flow_trained":
            axis.axvline(budget["delay"], color="grey", linestyle=":", label=f"task delay ({budget['delay']} steps)")
            axis.legend(fontsize=8)
        axis.set_title(f"‖∂L/∂h_t‖ / ‖∂L/∂h_T‖, {title}", fontsize=9)
        axis.set_xlabel("distance T − t from the loss (steps)")
        axis.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].legend(fontsize=8)
    _plot_clipping(axes[1, 1], report)
    figure.tight_layout()
    _save(figure, path)


def _plot_clipping(axis: Any, report: dict[str, Any]) -> None:
    """Per-update gradient norm before clipping for every cell, and after clipping for the vanilla RNN."""
    for result in report["cells"]:
        clip = result["clipping"]
        axis.semilogy(clip["norm_before"], color=COLOURS.get(result["cell"]), linewidth=0.8, alpha=0.8,
                      label=f"{result['cell']} before ({clip['share_clipped']:.1%} clipped)")
        if result["cell"] == "rnn":
            axis.semilogy(clip["norm_after"], color="black", linewidth=1.0, label="rnn after clipping")
    axis.axhline(report["budget"]["grad_clip"], color="grey", linestyle=":", label="clip threshold")
    lowest = min(min(result["clipping"]["norm_before"]) for result in report["cells"])
    axis.set_ylim(bottom=lowest / 100)  # room below the curves for the legend (log scale)
    axis.set_title(f"gradient clipping (Adam lr={report['budget']['learning_rate']:g})", fontsize=9)
    axis.set_xlabel("update (one chunk of k steps)")
    axis.set_ylabel("global gradient norm")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="lower right", ncol=2)


def _save(figure: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=PALETTE_COLOURS)
    write_atomically(path, lambda handle: image.save(handle, format="PNG", optimize=True))
