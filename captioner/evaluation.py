"""Evaluation: free-running captions for a split, scored with the coco-caption table (BLEU-1..4, METEOR,
ROUGE-L, CIDEr-D; METEOR when Java is present) and content accuracy on the built-in scenes. Validation after each epoch and the final test use this same function, and the
captions always come from `Captioner.generate`, never from teacher forcing.

Command line (evaluate an existing checkpoint on a split):

    python -m captioner.evaluation --checkpoint runs/shapes/best.pt --split test --beam-size 3

Exit status: 0 done, 2 refused (a bad option, checkpoint or dataset, before anything is evaluated),
4 the --output file could not be written (e.g. a full disk; the metrics were printed).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from captioner.checkpoint import CheckpointError
from captioner.cli import OneLineParser, check_numbers
from captioner.config import RANGES, ConfigError
from captioner.data import load_dataset
from captioner.data.batches import preprocess_file
from captioner.data.paths import shown_path
from captioner.data.records import DatasetFormatError, ImageRecord
from captioner.decoding import Decoding
from captioner.devices import DeviceError
from captioner.distributed import SINGLE, Cluster, gather_objects, run_sharded
from captioner.files import write_atomically
from captioner.metrics.bleu import bleu_scores
from captioner.metrics.cider import CiderD
from captioner.metrics.content import content_accuracy
from captioner.metrics.meteor import MeteorError, corpus_meteor, unavailable_reason
from captioner.metrics.repetition import caption_quality
from captioner.metrics.report import metric_table
from captioner.metrics.rouge import corpus_rouge_l
from captioner.model import Captioner, load_checkpoint
from captioner.modes import evaluating
from captioner.vocab import tokenize

EXIT_WRITE_FAILED = 4  # as train.py: a write failed (the evaluation itself was done)
OPTION_KEYS = {"beam_size": "eval.beam_size", "max_length": "eval.max_length",  # each flag sets this key:
               "no_repeat_ngram_size": "eval.no_repeat_ngram_size",  # checked against its range in RANGES
               "content_word_repeat_penalty": "eval.content_word_repeat_penalty", "length_penalty": "eval.length_penalty"}
RECORDED_DECODING = ("beam_size", "no_repeat_ngram_size", "no_repeat_content_words", "content_word_repeat_penalty",
                     "allow_unknown_word", "length_penalty")  # the decoding settings metrics.json names


@torch.no_grad()
def evaluate(model: Captioner, records: Sequence[ImageRecord], split: str, decoding: Decoding | None = None,
             batch_size: int = 100, pixels: torch.Tensor | None = None, cluster: Cluster = SINGLE,
             features: torch.Tensor | None = None, meteor: bool = True) -> tuple[dict[str, Any], list[str]]:
    """-> (metrics, generated captions). `pixels` (N, 3, S, S) uint8 skips reading the files;
    `features` (N, ...) from the feature cache skips the encoder too. `decoding` is `Captioner.generate`'s
    (default: the model's own); the metrics also count the captions that show a special token or repeat a
    content word (captioner/metrics/repetition.py). meteor=False skips METEOR (Java).
    Under torchrun (`cluster`), each rank captions its share of the batches and every rank gets all the
    captions in order (distributed.run_sharded): the same batches, so the same score, as one process."""
    device = next(model.parameters()).device
    decoding = model.decoding if decoding is None else decoding

    def caption_batch(start: int, stop: int) -> list[str]:
        if features is not None:
            inputs = {"features": torch.as_tensor(features[start:stop]).to(device)}
        elif pixels is not None:
            inputs = {"images": pixels[start:stop].to(device)}
        else:
            batch = [preprocess_file(record, model.encoder.preprocess) for record in records[start:stop]]
            inputs = {"images": torch.stack(batch).to(device)}
        generations = model.generate(**inputs, decoding=decoding)
        return [" ".join(generation.words[0]) for generation in generations]

    with evaluating(model):
        captions = run_sharded(caption_batch, len(records), batch_size, cluster)
    recorded = {name: getattr(decoding, name) for name in RECORDED_DECODING}
    metrics = {"split": split, **recorded, "num_images": len(records),
               **score_captions(captions, records, cluster, meteor)}
    return metrics, captions


def score_captions(captions: Sequence[str], records: Sequence[ImageRecord], cluster: Cluster = SINGLE,
                   meteor: bool = True) -> dict[str, Any]:
    """The metrics of `captions` (one per record) against the records' reference captions."""
    references = [[tokenize(text) for text in record.captions] for record in records]
    hypotheses = [tokenize(text) for text in captions]
    metrics: dict[str, Any] = bleu_scores(hypotheses, references)
    if meteor and references:  # rank 0 runs Java (one process per run, not per rank) and tells the others
        scored = meteor_metric(hypotheses, references) if cluster.is_main else {}
        metrics.update(gather_objects(scored, cluster)[0])
    if references:  # ROUGE-L and CIDEr-D ×100, CIDEr-D's frequencies from this split's references (as coco-caption)
        metrics["rouge_l"] = 100.0 * corpus_rouge_l(hypotheses, references)
        metrics["cider"] = 100.0 * CiderD(references).corpus_score(hypotheses, references)
    metrics["distinct_captions"] = len(set(captions))
    metrics.update(caption_quality(captions))
    if records and all(record.scene is not None for record in records):
        metrics.update(content_accuracy(captions, [record.scene for record in records]))
    return metrics


def meteor_metric(hypotheses: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """{"meteor": METEOR ×100}, or {} with one line on stderr (once per process) when it cannot run."""
    reason = unavailable_reason()
    if reason is None:
        try:
            return {"meteor": 100.0 * corpus_meteor(hypotheses, references)}
        except MeteorError as error:
            reason = f"METEOR left out: {error}"
    _say_once(reason)
    return {}


@functools.lru_cache(maxsize=None)
def _say_once(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Evaluate a checkpoint on a dataset split "
                                     "(BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).")
    parser.add_argument("--checkpoint", required=True, help="path to a .pt checkpoint written by train.py")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to caption")
    parser.add_argument("--beam-size", type=int, default=None,
                        help="beam width, 1 = greedy (default: the checkpoint's)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest caption, in words (default: the checkpoint's)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="never repeat an n-gram in a caption (0 = off; default: the checkpoint's setting)")
    parser.add_argument("--no-repeat-content-words", action=argparse.BooleanOptionalAction, default=None,
                        help="say each content word at most once (default: the checkpoint's eval setting)")
    parser.add_argument("--content-word-repeat-penalty", type=float, default=None,
                        help="log-probability a content word's second use costs (default: the checkpoint's eval setting)")
    parser.add_argument("--allow-unknown-word", action=argparse.BooleanOptionalAction, default=None,
                        help="let captions show <unk>, the raw model (default: the checkpoint's eval setting)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="rank beams by log p / length**alpha (default: the checkpoint's eval setting)")
    parser.add_argument("--data-root", default=None, help="dataset directory (default: the one in the checkpoint's config)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--output", default=None, help="write metrics and captions to this JSON file")
    parser.add_argument("--no-meteor", action="store_true", help="leave METEOR out (it needs Java and starts it)")
    args = parser.parse_args(argv)
    check_numbers(parser, args, {name: RANGES[key] for name, key in OPTION_KEYS.items()})
    refusal = check_arguments(args)
    if refusal:
        parser.error(refusal)  # one line, exit 2, before the checkpoint is read
    try:
        model = load_checkpoint(args.checkpoint, device=args.device)
        data_config = model.run_config.data
        if args.data_root:
            data_config.root = args.data_root
        records = load_dataset(data_config)[args.split]
        if not records:
            raise DatasetFormatError(f"data.root={data_config.root}: the {args.split} split is empty")
    except (CheckpointError, ConfigError, DatasetFormatError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    given = {field.name: getattr(args, field.name) for field in fields(Decoding)
             if getattr(args, field.name, None) is not None}  # a setting not given is the checkpoint's
    decoding = replace(model.decoding, **given)
    metrics, captions = evaluate(model, records, args.split, decoding, meteor=not args.no_meteor)
    print(metric_table(metrics))
    if args.output:
        examples = [{"image": shown_path(r.path, data_config.root), "generated": c, "references": list(r.captions)}
                    for r, c in zip(records, captions)]
        if not write_output(args.output, {"metrics": metrics, "captions": examples}):
            return EXIT_WRITE_FAILED
        print(f"metrics and captions: {args.output}")
    return 0


def write_output(path: str, content: dict[str, Any]) -> bool:
    """`content` as JSON at `path`, atomically. A failed write (a full disk after all the work) is one
    line on stderr and False: the metrics are on stdout already, and no partial file is left."""
    try:
        write_atomically(path, json.dumps(content, indent=2).encode())
    except OSError as error:
        print(f"error: --output {path}: could not write it ({error.strerror or error}); the metrics are printed "
              "above", file=sys.stderr)
        return False
    return True


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with --output, as one line, or None."""
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            return f"--output {output}: is a directory; name a JSON file"
        if not output.parent.is_dir():
            return f"--output {output}: folder {output.parent} does not exist"
        if not os.access(output.parent, os.W_OK):
            return f"--output {output}: folder {output.parent} is not writable"
    return None


if __name__ == "__main__":
    sys.exit(main())
