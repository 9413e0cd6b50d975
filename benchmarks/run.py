"""Run the performance benchmarks and write one JSON file per benchmark.

    python -m benchmarks                          # everything, CPU (and CUDA if present), ~3-5 min on 2 cores
    python -m benchmarks --only recurrent decoding --repeats 11
    python benchmarks/run.py --quick              # tiny shapes, 2 repeats: a smoke test (seconds)
    python -m benchmarks --device cuda --only recurrent   # StackedLSTM against cuDNN on a GPU

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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP: before `import torch`

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `captioner` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import Settings, machine  # noqa: E402

BENCHMARKS = ("recurrent", "training", "decoding", "encoders", "loading", "scaling")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the JSON results")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="run only these benchmarks")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed samples per variant (default 5, 2 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the recorded numbers use 2)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 repeats: checks that it all runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="devices for the recurrent benchmark (the others measure the CPU): auto = CPU, "
                             "plus CUDA when a GPU is visible")
    parser.add_argument("--plot", type=Path, default=None,
                        help="scaling: also draw the cost-growth plot into this PNG (e.g. docs/lstm_scaling.png)")
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
                        devices=devices[args.device], extra={"plot": args.plot})
    print(f"machine: {json.dumps(machine())}\n")
    started, results = time.perf_counter(), {}
    for name in args.only:
        began = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        results[name] = module.run(settings)
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        print(f"\n[{name}: {results[name]['seconds']} s]\n")
    total = round(time.perf_counter() - started, 1)
    summary = {"machine": machine(), "seconds": total, "repeats": repeats, "quick": args.quick, "results": results}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"all benchmarks: {total} s; JSON in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
