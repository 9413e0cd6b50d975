"""Caption latency on CPU: p50 and p95 per image, at beam 1 and beam 3, one image per request.

    python benchmarks/latency.py                                  # default model + the largest configured encoder
    python benchmarks/latency.py runs/shapes/best.pt configs/flickr8k_sample.yaml --runs 50

Each model is a trained checkpoint (.pt) or a config (.yaml). A config is built untrained, with no
downloaded weights and a vocabulary of --vocab-size placeholder words: its latency is real, its
captions are not, and an untrained decoder rarely says <end>, so it decodes all --max-length words,
an upper bound. One timed request is what the demo does: decode the uploaded bytes with the shared
loader, apply the encoder's transform, encode, beam search. The images cycle through
examples/images/*.jpg. p50/p95 are wall-clock; "CPU ms" is the process's CPU time per request,
summed over threads, which a busy shared machine inflates far less than wall-clock time.
Prints a Markdown table and writes the numbers as JSON (--output).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads on a busy machine
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from captioner.config import load_config  # noqa: E402
from captioner.demo.service import caption_images, requested_decoding  # noqa: E402
from captioner.images import load_image  # noqa: E402
from captioner.model import Captioner, load_checkpoint  # noqa: E402
from captioner.vocab import Vocabulary  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "runs" / "shapes" / "best.pt"
DEFAULT_CONFIG = REPO / "configs" / "shapes.yaml"
LARGEST_ENCODER_CONFIG = REPO / "configs" / "flickr8k_sample.yaml"  # efficientnet_lite0, E = H = 512


def build_model(spec: str, vocab_size: int) -> tuple[Captioner, bool]:
    """(model in eval mode, whether it is trained) from a checkpoint or a config file."""
    if spec.endswith(".pt"):
        return load_checkpoint(spec), True
    config = load_config(spec)
    config.model.pretrained = False  # latency does not depend on the weights' values; never download
    vocab = Vocabulary(f"word{index}" for index in range(vocab_size - 4))  # 4 specials are added
    return Captioner(config.model, vocab).eval(), False


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def time_requests(model: Captioner, images: list[bytes], beam_size: int, runs: int, warmup: int,
                  max_length: int) -> dict[str, float]:
    """Milliseconds per request over `runs` requests, after `warmup` untimed ones."""
    decoding = requested_decoding(model, "beam search", beam_size=beam_size, max_length=max_length)
    times, cpu_times, words = [], [], []
    for index in range(warmup + runs):
        encoded = images[index % len(images)]
        start, cpu_start = time.perf_counter(), time.process_time()
        generation = caption_images(model, [load_image(encoded, name="benchmark")], decoding)[0]
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
            cpu_times.append((time.process_time() - cpu_start) * 1000.0)  # all threads together
            words.append(len(generation.words[0]))
    return {"p50_ms": round(percentile(times, 0.50), 1), "p95_ms": round(percentile(times, 0.95), 1),
            "mean_ms": round(statistics.fmean(times), 1), "cpu_ms": round(statistics.fmean(cpu_times), 1),
            "mean_words": round(statistics.fmean(words), 1)}


def benchmark(specs: list[str], beams: list[int], runs: int, warmup: int, max_length: int,
              vocab_size: int) -> list[dict]:
    images = [path.read_bytes() for path in sorted((REPO / "examples" / "images").glob("*.jpg"))]
    if not images:
        raise SystemExit("error: no example images in examples/images/")
    results = []
    for spec in specs:
        model, trained = build_model(spec, vocab_size)
        config = model.config
        for beam_size in beams:
            name = f"{Path(spec).parent.name}/{Path(spec).name}" if trained else Path(spec).name
            row = {"model": name,
                   "trained": trained, "backbone": config.backbone, "cell": config.cell,
                   "attention": bool(getattr(config, "attention", False)),
                   "layers": config.num_layers, "hidden": config.hidden_size, "vocab": len(model.vocab),
                   "beam": beam_size}
            row.update(time_requests(model, images, beam_size, runs, warmup, max_length))
            results.append(row)
            print(f"  {row['model']} beam {beam_size}: p50 {row['p50_ms']} ms", file=sys.stderr)
    return results


def markdown_table(results: list[dict]) -> str:
    lines = ["| model | weights | backbone | cell x layers, H | vocab | beam | p50 ms | p95 ms | CPU ms | mean words |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        weights = "trained" if row["trained"] else "untrained (upper bound)"
        attention = " + attention" if row["attention"] else ""
        lines.append(f"| {row['model']} | {weights} | {row['backbone']} | {row['cell']} x {row['layers']}, "
                     f"{row['hidden']}{attention} | {row['vocab']} | {row['beam']} | {row['p50_ms']} | {row['p95_ms']} "
                     f"| {row['cpu_ms']} | {row['mean_words']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="checkpoints (.pt) or configs (.yaml); default: runs/shapes/best.pt "
                        "(configs/shapes.yaml if not trained yet) and configs/flickr8k_sample.yaml")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam sizes (default: 1 3)")
    parser.add_argument("--runs", type=int, default=50, help="timed requests per model and beam (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=20, help="longest caption, in words (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=3000, help="words of an untrained config's vocabulary "
                        "(default: %(default)s, about Flickr8k's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s, what demo.py "
                        "gives each of its 2 concurrent requests on a 2-core machine)")
    parser.add_argument("--output", default="latency.json", help="JSON results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--runs and --threads must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    default = str(DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else DEFAULT_CONFIG)
    specs = args.models or [default, str(LARGEST_ENCODER_CONFIG)]
    results = benchmark(specs, args.beams, args.runs, args.warmup, args.max_length, args.vocab_size)  # no_grad, as the demo
    machine = {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
               "threads": args.threads, "load_average_1min": round(os.getloadavg()[0], 2),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
               "python": platform.python_version()}
    Path(args.output).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(markdown_table(results))
    print(f"\n{machine}; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
