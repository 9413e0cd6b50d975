"""Caption image files from the command line, no web page needed.

    python -m captioner.caption photo.jpg holiday/ "scans/*.png"    # the photo model shipped with the package
    python -m captioner.caption --model my-release/ photo.jpg       # a release: a shipped name or a directory
    python -m captioner.caption --checkpoint runs/shapes/best.pt photo.jpg
    python -m captioner.caption --checkpoint runs/shapes/best.pt --format jsonl --beam-size 5 photos/
    python -m captioner.caption --checkpoint runs/shapes/best.pt --attention-maps maps/ photos/

Each PATH is a file, a folder (searched recursively for image files) or a glob pattern. Every image
is read by the project's one loader (`captioner.images.load_image`) and batches go through
`Captioner.generate`, the generate() of validation, evaluation and the demo. Output on stdout:
`file<TAB>caption` (text, default), one JSON object per image with the alternatives and their
log-probabilities (jsonl), or a CSV with a header row (csv). In the text format a file name that holds
a tab, a newline or another unprintable character, starts with `"`, or cannot be written in stdout's
encoding is written as a JSON string ("a\\nb.jpg"), so every line is one record; jsonl and csv quote
by their own rules. A file that cannot be read or decoded (a FIFO or a device is not read) gets one
line on stderr naming it, and the others go on. Exit status: 0 all captioned, 1 some file failed,
2 nothing could start (bad checkpoint, release or option), 4 the output could not be written (a full disk);
a reader that closes the pipe early (`| head -1`) ends the command quietly with 141, as it would a
standard Unix tool.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: no spinning on a shared CPU
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from captioner.caption_output import (  # noqa: E402
    FORMATS,
    AttentionMapWriter,
    Captioned,
    OutputError,
    Refusal,
    Writer,
    shown_name,
)
from captioner.checkpoint import CheckpointError  # noqa: E402
from captioner.cli import OneLineParser, check_numbers  # noqa: E402
from captioner.config import RANGES  # noqa: E402
from captioner.decoding import Decoding, Generation  # noqa: E402
from captioner.images import ImageError, load_image  # noqa: E402
from captioner.model import Captioner, load_checkpoint  # noqa: E402
from captioner.modes import evaluating  # noqa: E402
from captioner.release import DEFAULT_MODEL, from_pretrained  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")  # what a folder search keeps
PROGRESS_FROM = 50  # images: fewer than this and no progress bar is drawn
EXIT_SOME_FAILED, EXIT_REFUSED, EXIT_WRITE_FAILED, EXIT_CLOSED_PIPE = 1, 2, 4, 141
# Every number the command takes, with its interval (RANGES notation): the config key's own range in
# RANGES where the option sets that key, so the command and a config file accept the same values.
OPTION_RANGES = {"beam_size": RANGES["eval.beam_size"], "max_length": RANGES["eval.max_length"],
                 "no_repeat_ngram_size": RANGES["eval.no_repeat_ngram_size"], "batch_size": RANGES["eval.batch_size"],
                 "threads": RANGES["train.threads"], "temperature": "[0, 100]", "seed": "[0, 4294967295]"}


def find_images(paths: list[str]) -> tuple[list[str], list[str]]:
    """-> (image files in command-line order, one error line per PATH that names nothing).
    Folders give their image files (by suffix, recursively, sorted); a file named directly is always
    tried, whatever its suffix, so a mislabelled image still gets read or a clear error."""
    found: list[str] = []
    errors: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files = sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            suffixes = ", ".join(IMAGE_SUFFIXES)
            errors += [] if files else [f"{shown_name(path)}: no image files ({suffixes}) in this folder"]
        elif os.path.exists(path):
            files = [path]
        elif glob.has_magic(path):
            files = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            errors += [] if files else [f"{shown_name(path)}: no file matches this pattern"]
        else:
            files, errors = [], errors + [f"{shown_name(path)}: no such file or folder"]
        found += [file for file in files if file not in found]
    return found, errors


def batches(files: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


BatchHook = Callable[[list[str], torch.Tensor, list[Generation]], None]


def caption_files(model: Captioner, files: list[str], decoding: Decoding, batch_size: int,
                  report_error: Callable[[str], None], on_batch: BatchHook | None = None) -> Iterator[Captioned]:
    """Read, batch and caption `files`; each unreadable file goes to `report_error(line)` and is skipped.
    `on_batch(files, pixels, generations)` sees every batch (the attention maps use it)."""
    for chunk in batches(files, batch_size):
        images, names = [], []
        for file in chunk:
            try:
                images.append(load_image(file, name=shown_name(file)))
                names.append(file)
            except (ImageError, OSError) as error:
                report_error(f"error: {_one_line(error)}")
        if not images:
            continue
        with evaluating(model):
            pixels = model.pixels(images)  # (B, 3, S, S) uint8
            generations = model.generate(pixels, decoding)
        if on_batch is not None:
            on_batch(names, pixels, generations)
        for name, generation in zip(names, generations):
            yield Captioned(name, [" ".join(words) for words in generation.words], generation.log_probs,
                            generation.finished)


def command_line_decoding(args: argparse.Namespace, model: Captioner) -> Decoding:
    """The checkpoint's own decoding (no <unk>, repeats, beam), as its evaluation, the API and the demo
    use it, with what the command line sets; with --temperature, --beam-size counts the samples."""
    given = {name: getattr(args, name) for name in ("beam_size", "max_length", "no_repeat_ngram_size")
             if getattr(args, name) is not None}
    decoding = replace(model.decoding, **given)
    if args.temperature > 0:
        decoding = replace(decoding, temperature=args.temperature, seed=args.seed, num_samples=decoding.beam_size)
    return decoding


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m captioner.caption", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 all captioned, 1 some file failed, 2 refused.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, metavar="NAME|DIR",
                        help=f"a release: a shipped model's name or a release directory (default: {DEFAULT_MODEL})")
    source.add_argument("--checkpoint", default=None, help="a .pt checkpoint written by train.py (e.g. runs/shapes/best.pt)")
    parser.add_argument("--beam-size", type=int, default=None,
                        help="beam width, 1 = greedy (default: the model's); with --temperature, captions "
                        "sampled per image")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest caption, in words (default: the model's)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="beam search never repeats an n-gram (0 = off; default: the checkpoint's setting)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sample the captions at this softmax temperature instead of beam search (0 = beam search)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: a fresh draw)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per generate() call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = torch's choice)")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text: file<TAB>caption; jsonl: adds the alternatives and log-probabilities; csv")
    parser.add_argument("--attention-maps", metavar="DIR", default=None,
                        help="also write, per image, a PNG of each word's attention over the image into DIR")
    args = parser.parse_args(argv)
    check_numbers(parser, args, OPTION_RANGES)
    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    return args


def device_problem(name: str) -> str | None:
    """Why `name` is not a device torch can use here (checked before the checkpoint is read), else None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r}: expected cpu, cuda or cuda:N"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: no CUDA device is available on this machine"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if hasattr(sys.stdout, "reconfigure"):  # csv and jsonl names in any encoding: never a UnicodeEncodeError
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return caption_command(args)
    except BrokenPipeError:  # the reader is gone (`| head -1`): stop quietly, as standard tools do
        _discard_stdout()
        return EXIT_CLOSED_PIPE
    except OutputError as error:
        _discard_stdout()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_WRITE_FAILED


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what is left cannot fail again."""
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (a caller's StringIO): nothing is flushed at exit
        pass


def caption_command(args: argparse.Namespace) -> int:
    """The command after its options are checked: load, find, caption, write."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint, device=args.device)
        else:
            model = from_pretrained(args.model or DEFAULT_MODEL, device=args.device)
        source = args.checkpoint or args.model or DEFAULT_MODEL
        maps = AttentionMapWriter(model, source, Path(args.attention_maps)) if args.attention_maps else None
    except (CheckpointError, Refusal) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_REFUSED
    files, errors = find_images(args.paths)
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, disable=len(files) < PROGRESS_FROM or None)
    for line in errors:
        tqdm.write(f"error: {line}", file=sys.stderr)
    failures = len(errors)

    def report_error(line: str) -> None:
        nonlocal failures
        failures += 1
        tqdm.write(line, file=sys.stderr)

    writer = Writer(sys.stdout, args.format)
    for result in caption_files(model, files, command_line_decoding(args, model), args.batch_size, report_error,
                                maps.write if maps else None):
        writer.write(result)
        bar.update(1)
    bar.update(len(files) - bar.n)  # the files that failed count as done
    bar.close()
    return EXIT_SOME_FAILED if failures else 0


def _one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
