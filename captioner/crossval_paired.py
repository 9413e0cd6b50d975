"""Two cross-validation reports compared fold by fold: the tuning protocol's decision rule.

    python -m captioner.crossval_paired runs/a/crossval.json runs/b/crossval.json
    python -m captioner.crossval_paired a.json b.json:eval.length_penalty=0.7   # a --compare decoding of b

Two configs run on the same folds (same dataset, --folds and --seeds: `captioner.crossval` deals the
images by seed alone) are scored on the same photos, so most of the spread between folds cancels in
their difference. For each metric this prints both means, the mean of the per-fold differences
(B - A) ± its standard error, and the differences themselves. A setting wins when its mean difference
exceeds its standard error. FILE:VARIANT picks a `--compare` decoding of that report (default: the
config's own decoding, "config").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from captioner.crossval import CONFIG_DECODING, REPORTED

Key = tuple[int, int]  # (seed, fold)


def read_report(argument: str) -> tuple[dict[Key, dict[str, float]], dict[Key, list[str]]]:
    """FILE[:VARIANT] -> per (seed, fold): that decoding's scores, and the images the fold held out."""
    path, _, variant = argument.partition(":")
    try:
        report = json.loads(Path(path).read_text())
        runs = report["runs"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{path}: not a captioner.crossval report ({error})") from error
    variant = variant or CONFIG_DECODING
    if runs and variant not in runs[0]["scores"]:
        raise ValueError(f"{path}: no decoding {variant!r}; it has {', '.join(runs[0]['scores'])}")
    scores = {(run["seed"], run["fold"]): run["scores"][variant] for run in runs}
    held_out = {(run["seed"], run["fold"]): run["held_out"] for run in runs}
    return scores, held_out


def paired_differences(base: str, other: str) -> dict[str, dict[str, Any]]:
    """Per metric: the means of both reports over their common folds, and the paired difference (other - base)."""
    (a, a_images), (b, b_images) = read_report(base), read_report(other)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{base} and {other} share no (seed, fold): run both with the same --folds and --seeds")
    for key in common:
        if sorted(a_images[key]) != sorted(b_images[key]):
            raise ValueError(f"seed {key[0]} fold {key[1]} held out other images in {base} than in {other}: "
                             "not the same dataset, --folds or seed")
    result = {}
    for metric in REPORTED:
        differences = [b[key][metric] - a[key][metric] for key in common]
        se = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
        result[metric] = {"base": statistics.fmean(a[key][metric] for key in common),
                          "other": statistics.fmean(b[key][metric] for key in common),
                          "difference": statistics.fmean(differences), "se": se, "per_fold": differences,
                          "folds": common}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="report A: FILE[:VARIANT]")
    parser.add_argument("other", help="report B: FILE[:VARIANT]; differences are B - A")
    args = parser.parse_args(argv)
    try:
        table = paired_differences(args.base, args.other)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(table['bleu4']['folds'])} folds in common; B - A, mean ± standard error")
    for metric, row in table.items():
        folds = " ".join(f"{value:+.2f}" for value in row["per_fold"])
        print(f"{metric:30s} A {row['base']:7.2f}  B {row['other']:7.2f}  B - A {row['difference']:+6.2f} ± "
              f"{row['se']:.2f}  per fold: {folds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
