"""k-fold cross-validation: a tuning protocol for datasets of a few hundred photos.

    python -m captioner.crossval --config configs/flickr8k_sample.yaml --folds 5 --seeds 0 1 2 \
        data.root=path/to/flickr8k-sample

With a few hundred photos, one dev split is too small to choose settings on: a choice made from many
runs scored on the same 100 photos partly fits the noise of those photos. Here every image of the
dataset (its train, val and test splits together) is dealt into k parts, by image, never by caption,
in an order fixed by the seed. Fold i trains on the other k-1 parts and is scored on part i, which
nothing in that run has seen: a share of the training images (--val-fraction, drawn with the same
seed) chooses the checkpoint by train.checkpoint_metric, as a dev split does. Each (seed, fold) is an
ordinary training run (`Trainer`, so every config key means what it means in train.py), in
<output-dir>/seed-S/fold-I. Same dataset, k and seed: the same folds, whatever the config, so two
configs are compared on the same images.

`--compare eval.KEY=VALUE[,eval.KEY=VALUE]` scores each fold's checkpoint again with other decoding
settings (e.g. eval.no_repeat_content_words=false): decoding is compared on the same weights, at no training cost.
One JSON file (--output) holds every fold's numbers and captions and, per metric, the mean, the sample
standard deviation over folds and seeds, and its standard error, and the scores of every held-out
caption pooled per seed (`pooled_scores`); it is rewritten after each fold. `--name-words plane,jet`
also reports the share of captions that name one of the words.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from captioner.checkpoint import check_compatible, read_checkpoint
from captioner.config import Config, ConfigError, load_config, to_dict
from captioner.data import Splits, load_dataset
from captioner.data.records import SPLITS, DatasetFormatError, ImageRecord
from captioner.evaluation import evaluate, score_captions
from captioner.files import write_atomically
from captioner.vocab import tokenize

if TYPE_CHECKING:  # the trainer imports torch; this module's argument checks run first
    from captioner.training.trainer import Trainer

REPORTED = ("bleu1", "bleu4", "cider", "distinct_captions", "special_token_percent", "repeated_content_word_percent")
CONFIG_DECODING = "config"  # the name of the config's own decoding among the compared ones


def fold_splits(records: Sequence[ImageRecord], folds: int, seed: int, val_fraction: float) -> list[Splits]:
    """Deal the images into `folds` parts (seeded, independent of reading order); fold i's test split
    is part i, its val split the first `val_fraction` of the other parts' images, its train split the rest."""
    if folds < 2:
        raise ValueError(f"--folds {folds}: expected 2 or more")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction}: expected at least 0 and less than 1")
    images = sorted(records, key=lambda record: record.path)
    if len({record.path for record in images}) != len(images):
        raise DatasetFormatError("cross-validation: an image is listed twice; its captions would cross folds")
    if len(images) < 2 * folds:
        raise DatasetFormatError(f"cross-validation: {len(images)} images cannot fill {folds} folds of 2 or more")
    random.Random(seed).shuffle(images)
    parts = [images[i::folds] for i in range(folds)]
    result = []
    for held_out in range(folds):
        pool = [record for part, images_of_part in enumerate(parts) if part != held_out for record in images_of_part]
        num_val = round(val_fraction * len(pool))
        roles = {"train": pool[num_val:], "val": pool[:num_val], "test": parts[held_out]}
        result.append({split: [replace(record, split=split) for record in roles[split]] for split in SPLITS})
    return result


def decoding_variants(config_path: str, overrides: Sequence[str], compare: Sequence[str]) -> dict[str, Config]:
    """The config's own decoding, then one config per --compare eval.KEY=VALUE[,eval.KEY=VALUE...]
    (checked like any override)."""
    variants = {CONFIG_DECODING: load_config(config_path, overrides)}
    for variant in compare:
        settings = variant.split(",")
        if not all(setting.startswith("eval.") for setting in settings):
            raise ConfigError(f"--compare {variant}: expected eval.KEY=VALUE decoding settings, separated by commas")
        variants[variant] = load_config(config_path, [*overrides, *settings])
    return variants


def run_fold(config: Config, splits: Splits, variants: dict[str, Config], rescore: bool = False,
             name_words: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Train on splits["train"], choose on splits["val"], score on splits["test"] with every decoding variant.
    rescore: skip the training and score the fold's best.pt from an earlier run of the same folds.
    name_words: also report the share of captions that hold one of these words (naming_percent)."""
    from captioner.model import current_weights  # torch loads after the arguments are checked
    from captioner.training.trainer import Trainer

    started = time.perf_counter()
    if not rescore:
        trainer = Trainer(config, splits=splits)
        history = trainer.fit()["history"]  # fit keeps the best weights
        return _score_fold(trainer, history, splits, variants, started, name_words)
    best = Path(config.run_dir) / "best.pt"
    saved = read_checkpoint(best)
    with tempfile.TemporaryDirectory() as scratch:  # the fold's own run_dir holds its run: never written again
        trainer = Trainer(replace(config, run_dir=scratch), splits=splits)
        weights = current_weights(saved["model"])  # a checkpoint of an older version loads as load_checkpoint's do
        check_compatible(trainer.model.state_dict(), weights, best)
        trainer.model.load_state_dict(weights)
        return _score_fold(trainer, saved["history"], splits, variants, started, name_words)


def _score_fold(trainer: Trainer, history: list[dict[str, Any]], splits: Splits, variants: dict[str, Config],
                started: float, name_words: frozenset[str]) -> dict[str, Any]:
    """Score the trainer's model on splits["test"] with every decoding variant; keep its captions."""
    held_out = splits["test"]
    inputs = trainer.inputs.for_evaluation(trainer.inputs.of(held_out))
    scores, captions = {}, {}
    for name, variant in variants.items():
        ev = variant.eval
        metrics, generated = evaluate(trainer.model, held_out, "test", ev.decoding(), ev.batch_size, meteor=ev.meteor, **inputs)
        scores[name] = {key: metrics[key] for key in REPORTED}
        if name_words:
            scores[name]["naming_percent"] = naming_percent(generated, name_words)
        captions[name] = dict(zip((record.image_id for record in held_out), generated))
    metric = trainer.config.train.checkpoint_metric
    best = max(history, key=lambda entry: entry[metric]) if history else {}  # the epoch best.pt holds
    return {"seconds": round(time.perf_counter() - started, 1), "best_epoch": best.get("epoch"),
            "best_val_bleu4": best.get("bleu4"), "best_val_cider": best.get("cider"),
            "images": {split: len(splits[split]) for split in SPLITS},
            "held_out": [record.image_id for record in held_out], "scores": scores, "captions": captions}


def naming_percent(captions: Sequence[str], words: frozenset[str]) -> float:
    """The share of `captions` (in %) that hold at least one of `words`."""
    naming = sum(1 for caption in captions if words & set(tokenize(caption)))
    return 100.0 * naming / len(captions) if captions else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per decoding variant and metric: mean, sample sd over the runs (folds x seeds) and standard error."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in runs[0]["scores"] if runs else []:
        summary[name] = {}
        for key in runs[0]["scores"][name]:  # REPORTED, and naming_percent with --name-words
            values = [run["scores"][name][key] for run in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name][key] = {"mean": statistics.fmean(values), "sd": sd, "se": sd / len(values) ** 0.5,
                                  "n": len(values)}
    return summary


def pooled_scores(runs: list[dict[str, Any]], records: dict[str, ImageRecord],
                  name_words: frozenset[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per seed and decoding variant, every held-out caption scored at once (each photo captioned by the
    fold that never saw it): with folds of a few photos a fold's corpus BLEU-4 is often 0, no 4-gram
    in common, and a mean of zeros says nothing. `records`: every image of the folds, by image_id."""
    pooled: dict[str, dict[str, dict[str, float]]] = {}
    for seed in sorted({run["seed"] for run in runs}):
        of_seed = [run for run in runs if run["seed"] == seed]
        pooled[f"seed-{seed}"] = {}
        for name in of_seed[0]["captions"]:
            captions = {image: caption for run in of_seed for image, caption in run["captions"][name].items()}
            metrics = score_captions(list(captions.values()), [records[image] for image in captions], meteor=False)
            scores = {key: metrics[key] for key in ("bleu1", "bleu4", "cider")}
            if name_words:
                scores["naming_percent"] = naming_percent(list(captions.values()), name_words)
            pooled[f"seed-{seed}"][name] = {"images": len(captions), **scores}
    return pooled


def write_report(path: Path, header: dict[str, Any], runs: list[dict[str, Any]],
                 records: dict[str, ImageRecord]) -> None:
    name_words = frozenset(header.get("name_words", ()))
    report = {**header, "runs": runs, "summary": summarise(runs), "pooled": pooled_scores(runs, records, name_words)}
    write_atomically(path, json.dumps(report, indent=1).encode())


def print_summary(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    for name, metrics in summary.items():
        cells = [f"{key} {value['mean']:.2f} ± {value['sd']:.2f}" for key, value in metrics.items()]
        print(f"{name}: " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file, as for train.py")
    parser.add_argument("--folds", type=int, default=5, help="k: parts of the images (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="each seed deals its own folds and seeds its runs")
    parser.add_argument("--val-fraction", type=float, default=0.13,
                        help="share of a fold's training images that chooses its checkpoint (default: %(default)s)")
    parser.add_argument("--compare", action="append", default=[], metavar="eval.KEY=VALUE[,...]",
                        help="also score every fold's checkpoint with these decoding settings (repeatable)")
    parser.add_argument("--name-words", default="", metavar="WORD[,WORD...]",
                        help="also report the share of captions naming one of these words, e.g. plane,jet")
    parser.add_argument("--rescore", action="store_true",
                        help="train nothing: score each fold's best.pt in --output-dir again (new --compare settings)")
    parser.add_argument("--output-dir", default=None, help="fold runs go here (default: <run_dir>/crossval)")
    parser.add_argument("--output", default=None, help="the JSON report (default: <output-dir>/crossval.json)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.dropout=0.5")
    args = parser.parse_args(argv)
    try:
        variants = decoding_variants(args.config, args.overrides, args.compare)
        config = variants[CONFIG_DECODING]
        output_dir = Path(args.output_dir or Path(config.run_dir) / "crossval")
        output = Path(args.output or output_dir / "crossval.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        loaded = load_dataset(config.data)
        every_image = [record for split in SPLITS for record in loaded[split]]
        records = {record.image_id: record for record in every_image}
        folds = {seed: fold_splits(every_image, args.folds, seed, args.val_fraction) for seed in args.seeds}
    except (ConfigError, DatasetFormatError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    name_words = frozenset(tokenize(args.name_words.replace(",", " ")))
    header = {"config": args.config, "name_words": sorted(name_words), "overrides": args.overrides, "folds": args.folds, "seeds": args.seeds,
              "val_fraction": args.val_fraction, "rescored": args.rescore, "resolved_config": to_dict(config)}
    runs: list[dict[str, Any]] = []
    for seed, splits_of_folds in folds.items():
        for fold, splits in enumerate(splits_of_folds):
            fold_config = load_config(args.config, [*args.overrides, f"train.seed={seed}",
                                                    f"run_dir={output_dir / f'seed-{seed}' / f'fold-{fold}'}"])
            scored = run_fold(fold_config, splits, variants, args.rescore, name_words)
            runs.append({"seed": seed, "fold": fold, **scored})
            write_report(output, header, runs, records)
    print_summary(summarise(runs))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
