"""Throughput of the caption command: images per second for a folder of N images, on CPU.

    python benchmarks/caption_folder.py runs/shapes/best.pt --images 1000 --threads 1
    python benchmarks/caption_folder.py runs/shapes/best.pt --images 1000 --threads 2 --batch-size 64

Writes N images into a temporary folder (outside the repository, removed afterwards): the examples in
examples/images/*.jpg, cycled, each copy re-encoded at a slightly different size so no two files are
the same. Then runs `python -m captioner.caption --checkpoint CKPT FOLDER` exactly as a user would, and
once more on a single image to measure the start-up (imports, checkpoint load) on its own. Prints a
Markdown table: wall-clock seconds, images/s over the whole command, and images/s after start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"


def write_folder(folder: Path, count: int) -> list[Path]:
    """`count` distinct JPEGs made from the example images (each resized by a few pixels)."""
    sources = sorted(EXAMPLES.glob("*.jpg"))
    paths = []
    for index in range(count):
        with Image.open(sources[index % len(sources)]) as image:
            side = max(32, min(image.size) - index % 7)
            path = folder / f"image_{index:05d}.jpg"
            image.convert("RGB").resize((side, side)).save(path, quality=90)
            paths.append(path)
    return paths


def timed_command(arguments: list[str], threads: int) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, result) of `python -m captioner.caption ARGUMENTS`."""
    environment = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    before = os.times()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "captioner.caption", *arguments], cwd=REPO, env=environment,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if result.returncode != 0:
        raise SystemExit(f"the caption command failed ({result.returncode}): {result.stderr[-1000:]}")
    return wall, cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a trained checkpoint, e.g. runs/shapes/best.pt")
    parser.add_argument("--images", type=int, default=1000, help="images in the folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="the command's --batch-size (default: %(default)s)")
    parser.add_argument("--beam-size", type=int, default=3, help="the command's --beam-size (default: %(default)s)")
    parser.add_argument("--output", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    common = ["--checkpoint", args.checkpoint, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
              "--beam-size", str(args.beam_size)]
    with tempfile.TemporaryDirectory(prefix="caption-folder-") as folder:
        paths = write_folder(Path(folder), args.images)
        startup, _, _ = timed_command([*common, str(paths[0])], args.threads)
        wall, cpu, result = timed_command([*common, folder], args.threads)
    captioned = len(result.stdout.splitlines())
    numbers = {"images": captioned, "threads": args.threads, "batch_size": args.batch_size, "beam_size": args.beam_size,
               "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "startup_s": round(startup, 2),
               "images_per_s": round(captioned / wall, 1),
               "images_per_s_after_startup": round(captioned / max(wall - startup, 1e-9), 1),
               "cpu": platform.processor() or platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2)}
    print("| images | threads | batch | beam | wall s | start-up s | images/s | images/s after start-up | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {captioned} | {args.threads} | {args.batch_size} | {args.beam_size} | {wall:.1f} | {startup:.1f} | "
          f"{numbers['images_per_s']} | {numbers['images_per_s_after_startup']} | {cpu:.1f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
