"""`python -m captioner.crossval_paired`: two cross-validation reports compared fold by fold."""
from __future__ import annotations

import json
import statistics

import pytest

from captioner.crossval import REPORTED
from captioner.crossval_paired import main, paired_differences


def report(path, bleu4_by_fold: list[float], held_out_of=lambda fold: [f"img{fold}a", f"img{fold}b"],
           compared: dict[str, list[float]] | None = None):
    """A report shaped like captioner.crossval's, seed 0, with BLEU-4 per fold and 1.0 elsewhere."""
    def scores(bleu4: float) -> dict[str, float]:
        return {metric: bleu4 if metric == "bleu4" else 1.0 for metric in REPORTED}
    runs = []
    for fold, bleu4 in enumerate(bleu4_by_fold):
        variants = {"config": scores(bleu4)}
        for name, values in (compared or {}).items():
            variants[name] = scores(values[fold])
        runs.append({"seed": 0, "fold": fold, "held_out": held_out_of(fold), "scores": variants})
    path.write_text(json.dumps({"runs": runs}))
    return str(path)


def test_the_difference_is_paired_fold_by_fold(tmp_path):
    """Fold spreads of 10 points cancel: B is 0.5, 0.7, 0.3 above A on the same folds."""
    base = report(tmp_path / "a.json", [10.0, 20.0, 30.0])
    other = report(tmp_path / "b.json", [10.5, 20.7, 30.3], compared={"eval.length_penalty=0.7": [9.0, 19.0, 29.0]})
    row = paired_differences(base, other)["bleu4"]
    assert row["per_fold"] == pytest.approx([0.5, 0.7, 0.3])
    assert row["difference"] == pytest.approx(0.5)
    assert row["se"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.3]) / 3 ** 0.5)
    assert (row["base"], row["other"]) == pytest.approx((20.0, 20.5))
    assert paired_differences(base, other + ":eval.length_penalty=0.7")["bleu4"]["difference"] == pytest.approx(-1.0)


def test_reports_of_other_folds_are_refused_in_one_line(tmp_path, capsys):
    base = report(tmp_path / "a.json", [10.0, 20.0])
    reshuffled = report(tmp_path / "b.json", [10.0, 20.0], held_out_of=lambda fold: [f"img{1 - fold}a", "x"])
    assert main([base, reshuffled]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "seed 0 fold 0 held out other images" in message
    assert main([base, base + ":eval.beam_size=5"]) == 2
    assert "no decoding 'eval.beam_size=5'; it has config" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main([base, str(tmp_path / "broken.json")]) == 2
    assert "broken.json: not a captioner.crossval report" in capsys.readouterr().err


def test_the_command_prints_one_row_per_metric(tmp_path, capsys):
    base = report(tmp_path / "a.json", [10.0, 20.0])
    other = report(tmp_path / "b.json", [11.0, 22.0])
    assert main([base, other]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 folds in common") and len(lines) == 1 + len(REPORTED)
    assert "B - A  +1.50 ± 0.50" in next(line for line in lines if line.startswith("bleu4 "))
