"""The cell comparison: train every recurrent cell on the built-in shapes data with one budget and several
seeds, then tabulate test BLEU-1..4 and content accuracy (mean ± std over seeds), parameters and time per
epoch, and plot the validation curves.

The chapter's claims under test: the LSTM variants are "all about the same" (Greff et al. 2015, "LSTM: A
Search Space Odyssey"), and vanilla RNNs "don't work very well". Every run is an ordinary training run
(training.trainer.Trainer, the same code as train.py) that differs only in `model.cell` and `train.seed`; each one
lives in <output>/runs/<cell>-seed<N>/ and is reused when its metrics.json exists for the same config, so
an interrupted comparison resumes where it stopped.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from captioner.config import Config, load_config, to_dict
from captioner.files import write_atomically
from captioner.rnn.cells import CELLS
from captioner.training.stops import NonFiniteLoss

CELL_TYPES = tuple(CELLS)  # rnn, lstm, peephole, coupled, gru
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "content_accuracy", "shape", "colour")  # content.py's percentages
COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "content acc. %", "shape %", "colour %")
Log = Callable[[str], None]


@dataclass(frozen=True)
class CellBudget:
    """What every cell gets. FULL is the README's run (15 min wall, 7 CPU-minutes on a shared 2-core machine);
    QUICK (3.5 min) checks the pipeline but is too short for any cell to learn much."""

    num_train: int = 2000  # training images of the shapes data (5 captions each)
    num_val: int = 200  # validation images (greedy BLEU after every epoch)
    num_test: int = 300  # test images (final metrics, beam search)
    embed_size: int = 64  # E
    hidden_size: int = 128  # H
    epochs: int = 4  # passes over the training images
    seeds: int = 2  # runs per cell (train.seed = 0 .. seeds-1)


FULL = CellBudget()
QUICK = CellBudget(num_train=600, num_val=100, num_test=100, embed_size=32, hidden_size=64, epochs=3, seeds=2)


def budget_overrides(budget: CellBudget, data_root: Path) -> list[str]:
    """Config overrides shared by every run of the comparison (cell and seed are added per run).

    The recipe is configs/shapes.yaml's (small CNN trained from scratch, soft attention over its 4x4 map,
    Adam 3e-3, clipping at 5), smaller; every key is pinned here so the table does not drift with defaults.
    Attention matters: with the image only as the first input (Show and Tell), no cell looked at the image
    within this budget (greedy captions collapsed to a handful, colour accuracy near chance)."""
    data = [f"data.root={data_root}", "data.format=shapes", "data.min_word_count=1", "data.max_caption_length=20",
            f"data.synthetic.num_train={budget.num_train}", f"data.synthetic.num_val={budget.num_val}",
            f"data.synthetic.num_test={budget.num_test}"]
    model = ["model.backbone=small_cnn", "model.pretrained=false", "model.freeze_encoder=false",
             f"model.embed_size={budget.embed_size}", f"model.hidden_size={budget.hidden_size}", "model.num_layers=1",
             "model.dropout=0.1", "model.attention=true", "model.attention_query=previous"]
    train = [f"train.epochs={budget.epochs}", "train.batch_size=32", "train.captions_per_image=5",
             "train.learning_rate=0.003", "train.lr_schedule=cosine", "train.warmup_steps=20", "train.grad_clip=5.0"]
    return [*data, *model, *train, "eval.beam_size=3", "eval.val_beam_size=1", "eval.max_length=20"]


def run_config(base: list[str], cell: str, seed: int, run_dir: Path) -> Config:
    return load_config(None, [*base, f"model.cell={cell}", f"train.seed={seed}", f"run_dir={run_dir}"])


def train_one(config: Config, log: Log) -> dict[str, Any]:
    """Train one run (or reuse its finished metrics) -> metrics with "parameters" and "history"."""
    from captioner.training.trainer import (
        Trainer,  # imported here: the table and plot code need none of the training stack
    )

    run_dir = Path(config.run_dir)
    finished = run_dir / "metrics.json"
    if finished.is_file() and (run_dir / "config.yaml").is_file():
        if yaml.safe_load((run_dir / "config.yaml").read_text()) == to_dict(config):
            log(f"{run_dir.name}: reusing {finished}")
            return json.loads(finished.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-finished or differently configured run: start it afresh
    trainer = Trainer(config, log=lambda message: None)
    parameters = {"parameters": sum(p.numel() for p in trainer.model.parameters()),
                  "recurrent_parameters": sum(p.numel() for p in trainer.model.decoder.rnn.parameters())}
    started = time.process_time()  # CPU seconds: unlike wall time, barely moved by other jobs on a shared machine
    try:
        metrics = trainer.fit()
    except NonFiniteLoss as error:  # a diverged run is a result too: reported, not hidden
        metrics = {"failed": str(error), "history": trainer.history}
    metrics.update(parameters, cpu_seconds=round(time.process_time() - started, 1))
    write_atomically(finished, json.dumps(metrics, indent=2))
    return metrics


def run_cells(output: Path, budget: CellBudget, cells: tuple[str, ...] = CELL_TYPES, extra: tuple[str, ...] = (),
              data_root: Path | None = None, log: Log = print) -> dict[str, Any]:
    """Train every cell for every seed; -> {"budget", "overrides", "runs": {cell: [metrics per seed]}}."""
    data_root = data_root or Path("data") / f"shapes-experiments-{budget.num_train}"
    base = [*budget_overrides(budget, data_root), *extra]
    runs: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        for seed in range(budget.seeds):
            metrics = train_one(run_config(base, cell, seed, output / "runs" / f"{cell}-seed{seed}"), log)
            runs.setdefault(cell, []).append(metrics)
            log(f"{cell} seed {seed}: " + _one_line(metrics))
    return {"budget": asdict(budget), "overrides": base, "runs": runs}


def _one_line(metrics: dict[str, Any]) -> str:
    if "failed" in metrics:
        return f"FAILED ({metrics['failed']})"
    seconds = _epoch_seconds(metrics)
    return (f"test BLEU-4 {metrics['bleu4']:.1f}, content accuracy {metrics['content_accuracy']:.1f}%, "
            f"{seconds:.1f} s/epoch")


def _epoch_seconds(metrics: dict[str, Any]) -> float:
    history = metrics.get("history") or []
    return statistics.fmean(entry["epoch_seconds"] for entry in history) if history else float("nan")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per cell: mean and std over the seeds that finished, parameters, seconds per epoch."""
    rows = []
    for cell, results in runs.items():
        finished = [result for result in results if "failed" not in result]
        row: dict[str, Any] = {"cell": cell, "seeds": len(results), "failed": len(results) - len(finished),
                               "parameters": results[0].get("parameters"),
                               "recurrent_parameters": results[0].get("recurrent_parameters")}
        for metric in METRICS:
            values = [float(result[metric]) for result in finished if result.get(metric) is not None]
            row[metric] = _mean_std(values)
        row["epoch_seconds"] = _mean_std([_epoch_seconds(result) for result in results if result.get("history")])
        row["cpu_seconds"] = _mean_std([result["cpu_seconds"] for result in results if "cpu_seconds" in result])
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table: one row per cell, `mean ± std` over seeds."""
    header = ["cell", *COLUMNS, "recurrent params", "all params", "wall s / epoch", "CPU s / run", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["cell"]] + [_format(row[metric]) for metric in METRICS]
        cells += [f"{row['recurrent_parameters']:,}", f"{row['parameters']:,}", _format(row["epoch_seconds"]),
                  _format(row["cpu_seconds"], digits=0)]
        cells.append(f"{row['seeds'] - row['failed']}" + (f" ({row['failed']} diverged)" if row["failed"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: dict[str, float] | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def validation_curves(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[list[float]]]]:
    """Per cell and metric, one list of per-epoch values per seed, for plotting.plot_cells."""
    keys = {"val_bleu4": "bleu4", "val_colour": "colour", "train_loss": "train_loss"}
    return {cell: {name: [[entry.get(key) for entry in result.get("history", [])] for result in results]
                   for name, key in keys.items()}
            for cell, results in runs.items()}
