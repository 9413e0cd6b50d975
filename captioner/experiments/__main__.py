"""Command line of the seed experiments: `python -m captioner.experiments {cells,gradients} [--quick]`.

Each command writes <output>/<name>.json (everything measured), <name>.md (the README table) and a PNG
(<output>/<name>.png, or --figure). The README's figures are made with `--figure docs/<name>.png`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from captioner.files import write_atomically
from captioner.rnn.cells import CELLS

CELL_TYPES = tuple(CELLS)  # rnn, lstm, peephole, coupled, gru


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captioner.experiments",
                                     description="Check the chapter's claims about recurrent cells with this project.")
    commands = parser.add_subparsers(dest="command", required=True)
    cells = commands.add_parser("cells", help="train every cell type with one budget and several seeds")
    gradients = commands.add_parser("gradients", help="gradient flow through time, clipping, truncated BPTT")
    for name, command in (("cells", cells), ("gradients", gradients)):
        command.add_argument("--quick", action="store_true", help="the small budget (minutes on 2 cores)")
        command.add_argument("--cells", default=",".join(CELL_TYPES),
                             help="comma-separated cell types to run (default: all five)")
        command.add_argument("--output", type=Path, default=None,
                             help=f"directory for {name}.json/.md/.png (default: runs/experiments/{name}[-quick])")
        command.add_argument("--figure", type=Path, default=None, help=f"where to write the PNG (default: <output>/{name}.png)")
        command.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    cells.add_argument("--seeds", type=int, default=None, help="runs per cell (default: the budget's, 2)")
    cells.add_argument("--data-root", type=Path, default=None,
                       help="where the shapes data is generated (default: data/shapes-experiments-<num_train>)")
    cells.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="extra config override for every run, e.g. --set data.synthetic.num_train=100 (repeatable)")
    return parser


def parse_cells(text: str) -> tuple[str, ...]:
    cells = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in cells if name not in CELL_TYPES]
    if unknown or not cells:
        raise ValueError(f"--cells: expected a comma-separated subset of {','.join(CELL_TYPES)}, got {text!r}")
    return cells


def run_cells_command(args: argparse.Namespace, cells: tuple[str, ...], output: Path) -> None:
    from captioner.experiments import cells as experiment
    from captioner.experiments.plotting import plot_cells

    budget = experiment.QUICK if args.quick else experiment.FULL
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds: expected a positive number of runs per cell, got {args.seeds}")
        budget = dataclasses.replace(budget, seeds=args.seeds)
    extra = (*([f"train.threads={args.threads}"] if args.threads else []), *args.overrides)
    report = experiment.run_cells(output, budget, cells, extra, args.data_root)
    report["table"] = experiment.summarize(report["runs"])
    for results in report["runs"].values():
        for result in results:
            result.pop("examples", None)  # the per-run metrics.json keeps them; the summary stays short
    _write(output, "cells", report, experiment.markdown_table(report["table"]))
    plot_cells(experiment.validation_curves(report["runs"]), args.figure or output / "cells.png")


def run_gradients_command(args: argparse.Namespace, cells: tuple[str, ...], output: Path) -> None:
    import torch

    from captioner.experiments import gradients as experiment
    from captioner.experiments.plotting import plot_gradients

    if args.threads:
        torch.set_num_threads(args.threads)
    report = experiment.run_gradients(experiment.QUICK if args.quick else experiment.FULL, cells)
    _write(output, "gradients", report, experiment.markdown_table(report))
    plot_gradients(report, args.figure or output / "gradients.png")


def _write(output: Path, name: str, report: dict[str, Any], table: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(output / f"{name}.json", json.dumps(report, indent=2))
    write_atomically(output / f"{name}.md", table)
    print(table)


def main(argv: list[str] | None = None) -> int:
    from captioner.config import ConfigError
    from captioner.data.records import DatasetFormatError

    args = build_parser().parse_args(argv)
    output = args.output or Path("runs/experiments") / (args.command + ("-quick" if args.quick else ""))
    try:
        cells = parse_cells(args.cells)
        command = run_cells_command if args.command == "cells" else run_gradients_command
        command(args, cells, output)
    except (ConfigError, DatasetFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
