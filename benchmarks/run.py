"""Run the performance benchmarks and write one JSON file per benchmark.

    python -m benchmarks                          # everything, CPU (and CUDA if present), ~3-5 min on 2 cores
    python -m benchmarks --only recurrent decoding --repeats 11
    python benchmarks/run.py --quick              # tiny shapes, 2 repeats: a smoke test (seconds)
    python -m benchmarks --device cuda --only recurrent   # StackedLSTM against cuDNN on a GPU
    python -m benchmarks --only first_run         # the real `python train.py`, 3 fresh runs (~20 min on 2 cores)
    python -m benchmarks --only first_run --busy --checkout ../before --train-overrides train.threads=1

A plain `python -m benchmarks` runs the DEFAULT_BENCHMARKS; the OPTIONAL_BENCHMARKS (first_run: the whole
default training job, several minutes a run) run only when --only names them.

Each benchmark prints a Markdown table and writes <output>/<name>.json with the machine (CPU model, cores,
load), the versions (python, torch) and the thread count; summary.json lists them all with the wall time.

OMP_WAIT_POLICY defaults to PASSIVE here (set it to override): with the default spinning policy, two
OpenMP threads on a machine shared with other jobs wait for each other at every parallel op; measured on
the 2-core development machine under load, a training step took 9x longer (0.58 s against 0.064 s).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # the user's own, if any: first_run passes only that on
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP: before `import torch`

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `captioner` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import BenchmarkError, Settings, machine  # noqa: E402

DEFAULT_BENCHMARKS = ("recurrent", "training", "decoding", "encoders", "loading", "scaling")
OPTIONAL_BENCHMARKS = ("first_run",)  # minutes each: only when --only names them
BENCHMARKS = DEFAULT_BENCHMARKS + OPTIONAL_BENCHMARKS
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the JSON results")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(DEFAULT_BENCHMARKS),
                        help=f"run only these benchmarks (default: all but {', '.join(OPTIONAL_BENCHMARKS)})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed samples per variant (default 5, 2 with --quick); first_run: runs (default 3, "
                             "1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the recorded numbers use 2)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 repeats: checks that it all runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="devices for the recurrent benchmark (the others measure the CPU): auto = CPU, "
                             "plus CUDA when a GPU is visible")
    parser.add_argument("--plot", type=Path, default=None,
                        help="scaling: also draw the cost-growth plot into this PNG (e.g. docs/lstm_scaling.png)")
    parser.add_argument("--checkout", type=Path, default=None,
                        help="first_run: time the train.py of this checkout (e.g. a git worktree of an older "
                             "commit; default: this one)")
    parser.add_argument("--busy", action="store_true",
                        help="first_run: keep one other CPU-bound process running during each run")
    parser.add_argument("--train-overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="first_run: config overrides passed on to train.py, e.g. train.threads=1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    devices = {"cpu": ("cpu",), "cuda": ("cuda",), "auto": ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)}
    torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    settings = Settings(output=args.output, repeats=repeats, threads=args.threads, quick=args.quick,
                        devices=devices[args.device], extra=_extra(args))
    print(f"machine: {json.dumps(machine())}\n")
    started, results = time.perf_counter(), {}
    for name in args.only:
        began = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            results[name] = module.run(settings)
        except BenchmarkError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(f"\n[{name}: {results[name]['seconds']} s]\n")
    total = round(time.perf_counter() - started, 1)
    summary = {"machine": machine(), "seconds": total, "repeats": repeats, "quick": args.quick, "results": results}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"all benchmarks: {total} s; JSON in {args.output}")
    return 0


def _extra(args: argparse.Namespace) -> dict:
    """The per-benchmark switches (Settings.extra)."""
    return {"plot": args.plot, "checkout": args.checkout, "busy": args.busy, "train_overrides": args.train_overrides,
            "repeats": args.repeats, "user_omp_wait_policy": USER_OMP_WAIT_POLICY}


if __name__ == "__main__":
    sys.exit(main())
