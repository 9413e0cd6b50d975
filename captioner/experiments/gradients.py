"""Gradient flow through each cell: does ∂loss/∂h_t vanish with the distance from the loss?

The chapter's claim: "RNNs have vanishing gradients ... the LSTM maintains it". The cause is the chain
rule through time: ∂L/∂h_t = ∂L/∂h_T · Π_{s=t+1..T} ∂h_s/∂h_{s-1}. For the vanilla RNN each factor is
diag(1 − h_s²) W_h, so the product shrinks geometrically when W_h's gain is below 1 (Bengio et al. 1994;
Pascanu et al. 2013). The LSTM adds the path c_s = f_s ⊙ c_{s-1} + ..., whose factor is the forget gate
f_s itself: it preserves the gradient only as far as f stays near 1 (Hochreiter & Schmidhuber 1997).

Task (`recall`): a stream of random symbols, one-hot; at step t the model must name the symbol it saw
`delay` steps before. Each cell is a 1-layer StackedLSTM plus a linear readout. Measured, per cell:
  1. ‖∂L/∂h_t‖ against the distance T − t, the loss on the last step only, averaged over batches,
     (a) at initialisation (U(±1/√H), as nn.LSTM), (b) with the carry gate's bias raised by
     `carry_bias` (forget gate f, or GRU's update gate z; Gers et al. 2000, Jozefowicz et al. 2015),
     (c) after training on the task with truncated BPTT (chunks of k steps, tbptt.py);
  2. gradient clipping while training: the share of updates clipped, the norm before and after.
Computed in float64, so a gradient of 1e-30 is measured rather than lost to float32 underflow.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.experiments.tbptt import ChunkStep, train_truncated
from captioner.rnn.cells import CELLS
from captioner.rnn.stacked import StackedLSTM

CELL_TYPES = tuple(CELLS)  # rnn, lstm, peephole, coupled, gru
CARRY_GATE = {"lstm": 1, "peephole": 1, "coupled": 0, "gru": 1}  # chunk of bias_ih: f (i,f,g,o / f,g,o), z (r,z,n)
IGNORE = -100  # target of the first `delay` steps, which have nothing to recall


@dataclass(frozen=True)
class GradientBudget:
    """Sizes of the gradient experiment; FULL for the README, QUICK for the test and a first look."""

    hidden_size: int = 64  # H of every cell
    symbols: int = 8  # alphabet of the recall task (input one-hot, readout over the same symbols)
    delay: int = 10  # the target at step t is the symbol of step t − delay
    flow_length: int = 100  # steps between the first input and the loss when measuring ∂L/∂h_t
    flow_batches: int = 4  # batches averaged per curve
    batch_size: int = 32  # sequences per batch
    carry_bias: float = 1.0  # added to the forget (GRU: update) gate bias for curve (b)
    chunk_length: int = 20  # k of truncated BPTT while training
    sequence_length: int = 200  # length of each training stream, cut into chunks of k
    sequences: int = 40  # training streams per cell (updates = sequences × sequence_length / k)
    learning_rate: float = 0.01  # Adam; large on purpose, so clipping has something to do
    grad_clip: float = 1.0  # global gradient norm limit
    seed: int = 0  # weights and data


FULL = GradientBudget()
QUICK = GradientBudget(hidden_size=32, delay=5, flow_length=30, flow_batches=2, batch_size=16, chunk_length=10,
                       sequence_length=60, sequences=8)


class RecallModel(nn.Module):
    """StackedLSTM (one layer, any cell) + linear readout of the remembered symbol."""

    def __init__(self, cell: str, symbols: int, hidden_size: int) -> None:
        super().__init__()
        self.rnn = StackedLSTM(symbols, hidden_size, cell=cell)
        self.readout = nn.Linear(hidden_size, symbols)


def recall_batch(budget: GradientBudget, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """-> inputs (B, T, symbols) one-hot, targets (B, T): the symbol `delay` steps back, IGNORE before."""
    symbols = torch.randint(0, budget.symbols, (budget.batch_size, length), generator=generator)  # (B, T)
    targets = torch.full_like(symbols, IGNORE)
    targets[:, budget.delay :] = symbols[:, : length - budget.delay]  # y_t = s_{t−delay}
    return F.one_hot(symbols, budget.symbols).float(), targets  # (B, T, V), (B, T)


def raise_carry_bias(model: RecallModel, amount: float) -> None:
    """Add `amount` to the bias of the gate that keeps the old state (f, or z for GRU); rnn has none."""
    chunk = CARRY_GATE.get(model.rnn.cell)
    if chunk is None:
        return
    H = model.rnn.hidden_size
    with torch.no_grad():
        model.rnn.bias_ih_l0[chunk * H : (chunk + 1) * H] += amount


def gradient_flow(model: RecallModel, budget: GradientBudget, generator: torch.Generator) -> list[float]:
    """Mean per-sequence ‖∂L/∂h_t‖ for distances 0 .. T−1 from the loss, which sits on the last step only."""
    model = copy.deepcopy(model).double()  # float64: tiny gradients stay measurable
    T = budget.flow_length
    total = torch.zeros(T, dtype=torch.float64)
    for _ in range(budget.flow_batches):
        inputs, targets = recall_batch(budget, T, generator)
        state, hidden = None, []
        for t in range(T):
            h, state = model.rnn.step(inputs[:, t].double(), state)  # (B, H)
            h.retain_grad()  # h_t is a non-leaf; keep its total derivative ∂L/∂h_t
            hidden.append(h)
        logits = model.readout(hidden[-1])  # (B, symbols)
        F.cross_entropy(logits, targets[:, -1], reduction="sum").backward()  # sum: per-sequence gradients
        total += torch.stack([h.grad.norm(dim=1).mean() for h in hidden])  # (T,)
    return (total / budget.flow_batches).flip(0).tolist()  # index = distance T − t


def train_recall(model: RecallModel, budget: GradientBudget, generator: torch.Generator) -> list[ChunkStep]:
    """Train on the recall task with truncated BPTT (chunks of k), Adam and clipping; one step per chunk."""
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.learning_rate)
    steps: list[ChunkStep] = []
    for _ in range(budget.sequences):
        inputs, targets = recall_batch(budget, budget.sequence_length, generator)

        def loss_of(output: Tensor, positions: slice) -> Tensor:
            logits = model.readout(output)  # (B, k, symbols)
            return F.cross_entropy(logits.flatten(0, 1), targets[:, positions].flatten(), ignore_index=IGNORE)

        chunk_steps, _ = train_truncated(model.rnn, inputs, budget.chunk_length, loss_of, optimizer, budget.grad_clip)
        steps += chunk_steps
    return steps


@torch.no_grad()
def recall_accuracy(model: RecallModel, budget: GradientBudget, generator: torch.Generator) -> float:
    """Share of symbols recalled correctly on a fresh stream (positions that have a target)."""
    inputs, targets = recall_batch(budget, budget.sequence_length, generator)
    predictions = model.readout(model.rnn(inputs)[0]).argmax(dim=-1)  # (B, T)
    mask = targets != IGNORE
    return (predictions[mask] == targets[mask]).float().mean().item()


def measure_cell(cell: str, budget: GradientBudget) -> dict[str, Any]:
    """All measurements of one cell, from the same initial weights and data seed."""
    torch.manual_seed(budget.seed)
    generator = torch.Generator().manual_seed(budget.seed)
    model = RecallModel(cell, budget.symbols, budget.hidden_size)
    raised = copy.deepcopy(model)
    raise_carry_bias(raised, budget.carry_bias)
    result: dict[str, Any] = {"cell": cell, "parameters": sum(p.numel() for p in model.rnn.parameters())}
    result["flow_init"] = gradient_flow(model, budget, generator)
    result["flow_carry_bias"] = gradient_flow(raised, budget, generator) if cell in CARRY_GATE else None
    started = time.perf_counter()
    steps = train_recall(model, budget, generator)
    result["train_seconds"] = round(time.perf_counter() - started, 1)
    result["flow_trained"] = gradient_flow(model, budget, generator)
    result["recall_accuracy"] = recall_accuracy(model, budget, generator)
    result["clipping"] = clipping_summary(steps, budget.grad_clip)
    return result


def clipping_summary(steps: list[ChunkStep], grad_clip: float) -> dict[str, Any]:
    """Share of updates clipped and the norms before/after, plus the per-update series for the plot."""
    before = torch.tensor([step.norm_before for step in steps])
    after = torch.tensor([step.norm_after for step in steps])
    return {"grad_clip": grad_clip, "updates": len(steps), "share_clipped": sum(s.clipped for s in steps) / len(steps),
            "median_before": before.median().item(), "max_before": before.max().item(),
            "max_after": after.max().item(), "norm_before": _rounded(before), "norm_after": _rounded(after),
            "final_loss": sum(s.loss for s in steps[-10:]) / min(len(steps), 10)}


def _fade(flow: list[float]) -> float:
    return flow[-1] / flow[0]


def _rounded(values: Tensor) -> list[float]:
    return [float(f"{value:.4g}") for value in values.tolist()]


def run_gradients(budget: GradientBudget, cells: tuple[str, ...] = CELL_TYPES,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every cell; -> {"budget": ..., "cells": [per-cell results]}."""
    results = []
    for cell in cells:
        result = measure_cell(cell, budget)
        log(f"{cell}: recall accuracy {result['recall_accuracy']:.2f}, clipped {result['clipping']['share_clipped']:.1%} "
            f"of {result['clipping']['updates']} updates; ‖∂L/∂h‖ at distance {budget.flow_length - 1} / at 0: "
            f"{_fade(result['flow_init']):.1e} (init), {_fade(result['flow_trained']):.1e} (trained)")
        results.append(result)
    return {"budget": asdict(budget), "cells": results}


def markdown_table(report: dict[str, Any], distances: Optional[tuple[int, ...]] = None) -> str:
    """The README table: ‖∂L/∂h_{T−d}‖ / ‖∂L/∂h_T‖ at a few distances d for the three conditions (a ratio, so
    conditions whose readouts differ in scale compare by how fast the gradient fades), recall accuracy, clipping."""
    budget = report["budget"]
    last = budget["flow_length"] - 1
    distances = distances or tuple(sorted({min(10, last), last // 2, last}))
    header = ["cell"] + [f"{name} d={d}" for name in ("init", "bias+1", "trained") for d in distances]
    header += ["recall acc.", "clipped", "‖g‖ median / max before", "max after"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in report["cells"]:
        row = [result["cell"]]
        for key in ("flow_init", "flow_carry_bias", "flow_trained"):
            row += [f"{result[key][d] / result[key][0]:.1e}" if result[key] else "—" for d in distances]
        clip = result["clipping"]
        row += [f"{result['recall_accuracy']:.2f}", f"{clip['share_clipped']:.1%}",
                f"{clip['median_before']:.2f} / {clip['max_before']:.2f}", f"{clip['max_after']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
