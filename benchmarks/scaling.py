"""How the cost of forward + backward grows with batch, sequence length and hidden size: our StackedLSTM
(fast path) and torch's nn.LSTM, one axis varied at a time around the reference shape (B=64, T=20, E=256,
H=512, 2 layers). The growth exponent k of time ∝ size^k is fitted between each axis's end points: about
1 for B and T (the work is B*T*H*(E+H) multiply-adds), about 2 for H once the GEMMs dominate.

    python -m benchmarks --only scaling --plot docs/lstm_scaling.png
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import Settings, measure, milliseconds, table, write_result
from benchmarks.recurrent import train_call
from captioner.rnn.stacked import StackedLSTM

BASE = {"batch": 64, "length": 20, "hidden": 512, "input_size": 256, "num_layers": 2}
AXES = {"batch": (16, 32, 64, 128), "length": (10, 20, 40), "hidden": (256, 512, 1024)}
QUICK_BASE = {"batch": 4, "length": 4, "hidden": 8, "input_size": 8, "num_layers": 2}
QUICK_AXES = {"batch": (2, 4), "length": (2, 4), "hidden": (8, 16)}


def point(shape: dict, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = StackedLSTM(shape["input_size"], shape["hidden"], shape["num_layers"])
    library = nn.LSTM(shape["input_size"], shape["hidden"], shape["num_layers"], batch_first=True)
    library.load_state_dict(ours.state_dict())
    x = torch.randn(shape["batch"], shape["length"], shape["input_size"], requires_grad=True)
    return measure({"ours": train_call(ours, x), "torch": train_call(library, x)}, repeats)


def run(settings: Settings) -> dict:
    base, axes = (QUICK_BASE, QUICK_AXES) if settings.quick else (BASE, AXES)
    repeats = min(settings.repeats, 3)
    results: dict = {}
    rows = []
    for axis, values in axes.items():
        for value in values:
            timings = point({**base, axis: value}, repeats)
            results.setdefault(axis, []).append({"value": value, **{name: timings[name] for name in timings}})
            ours, library = timings["ours"]["min"], timings["torch"]["min"]
            rows.append([axis, value, milliseconds(ours), milliseconds(library), f"{ours / library:.3f}"])
    exponents = {axis: {name: round(_exponent(points, name), 2) for name in ("ours", "torch")}
                 for axis, points in results.items()}
    print(table(f"Forward + backward cost growth around B={base['batch']} T={base['length']} H={base['hidden']}",
                ["axis", "value", "ours ms (min)", "torch ms (min)", "ours / torch"], rows))
    print("\n" + "\n".join(f"- time ∝ {axis}^k: k = {values['ours']} (ours), {values['torch']} (torch)"
                           for axis, values in exponents.items()))
    plot = settings.extra.get("plot")
    if plot:
        draw(results, base, Path(plot))
        print(f"\nplot: {plot}")
    path = write_result(settings, "scaling", {"base": base, "points": results, "exponents": exponents,
                                              "plot": str(plot) if plot else None})
    return {"path": str(path), "exponents": exponents}


def _exponent(points: list[dict], name: str) -> float:
    """k in time ∝ size^k from the first and last point (log-log slope)."""
    first, last = points[0], points[-1]
    return math.log(last[name]["min"] / first[name]["min"]) / math.log(last["value"] / first["value"])


def draw(results: dict, base: dict, path: Path) -> None:
    """Three log-log panels, ms against batch, length and hidden size, ours and torch's."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    figure, panels = plt.subplots(1, len(results), figsize=(3.2 * len(results), 2.8), dpi=110)
    for panel, (axis, points) in zip(panels, results.items()):
        values = [p["value"] for p in points]
        for name, style in (("ours", "o-"), ("torch", "s--")):
            label = "StackedLSTM (ours)" if name == "ours" else "nn.LSTM (oneDNN)"
            panel.plot(values, [p[name]["min"] * 1e3 for p in points], style, label=label)
        panel.set_xscale("log", base=2)
        panel.set_yscale("log")
        panel.set_xticks(values, [str(v) for v in values])
        panel.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 100, 200, 500, 1000 ms ...
        panel.yaxis.set_major_formatter(ScalarFormatter())  # plain milliseconds, not 10^k labels
        panel.yaxis.set_minor_formatter(NullFormatter())
        panel.set_xlabel(axis)
        panel.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("forward + backward, ms")
    panels[0].legend(fontsize=7)
    figure.suptitle(f"2-layer LSTM, others fixed at B={base['batch']} T={base['length']} H={base['hidden']}",
                    fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
