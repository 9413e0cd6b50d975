"""Numbers out of range, crafted checkpoints and a device the machine lacks are refused in one line,
through train.py, `python -m captioner.evaluation` and demo.py: never a traceback, never a misleading
"damaged", never gigabytes allocated before the check."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_checkpoint import payload
from test_model import make_model

import train
from captioner.checkpoint import save_checkpoint
from captioner.demo import app as demo
from captioner.evaluation import main as evaluation_main

CONFIG = str(REPO / "configs/shapes.yaml")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# `python -m captioner.evaluation ARGS` in a child that prints its own peak RSS (MB) as the last line.
# Peak RSS from VmHWM: getrusage's ru_maxrss survives fork + exec on Linux, so it would report the
# size of the (large) pytest process that started this one; VmHWM belongs to the new address space.
EVALUATION_WITH_PEAK_RSS = """
import re, runpy, sys
sys.argv = ["captioner.evaluation", *sys.argv[1:]]
try:
    runpy.run_module("captioner.evaluation", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024)
sys.exit(code)
"""


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=0", "train.batch_size=0: expected a value in [1, inf)"),
    ("train.captions_per_image=0", "train.captions_per_image=0: expected a value in [1, inf)"),
    ("eval.beam_size=0", "eval.beam_size=0: expected a value in [1, inf)"),
    ("train.max_steps=-1", "train.max_steps=-1: expected a value in [0, inf)"),
    ("train.warmup_steps=-5", "train.warmup_steps=-5: expected a value in [0, inf)"),
    ("train.threads=-1", "train.threads=-1: expected a value in [0, 1024]"),
    ("train.threads=100000", "train.threads=100000: expected a value in [0, 1024]"),
    ("model.dropout=1.5", "model.dropout=1.5: expected a value in [0, 1)"),
    ("train.learning_rate=.nan", "train.learning_rate=nan: expected a value in (0, inf)"),
    ("eval.length_penalty=400", "eval.length_penalty=400.0: expected a value in [0, 5]"),
    ("eval.content_word_repeat_penalty=-1", "eval.content_word_repeat_penalty=-1.0: expected a value in [0, inf]"),
])
def test_numbers_out_of_range_are_refused_before_anything_is_written(tmp_path, capsys, override, expected):
    code = train.main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", override])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message == f"error: {expected}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--beam-size", "0"], "--beam-size 0: expected a value in [1, inf)"),
    (["--max-length", "0"], "--max-length 0: expected a value in [1, inf)"),
    (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size -1: expected a value in [0, inf)"),
    (["--length-penalty", "400"], "--length-penalty 400.0: expected a value in [0, 5]"),
    (["--length-penalty", "-400"], "--length-penalty -400.0: expected a value in [0, 5]"),
    (["--content-word-repeat-penalty", "nan"], "--content-word-repeat-penalty nan: expected a value in [0, inf]"),
    (["--output", "{tmp}/missing/metrics.json"],
     "--output {tmp}/missing/metrics.json: folder {tmp}/missing does not exist"),
    (["--output", "{tmp}"], "--output {tmp}: is a directory; name a JSON file"),
])
def test_evaluation_refuses_bad_numbers_and_output_paths_in_one_line(tiny_run, tmp_path, capsys, flags, expected):
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    with pytest.raises(SystemExit) as stopped:
        evaluation_main(["--checkpoint", str(tiny_run / "best.pt"), *flags])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and error.endswith(expected.replace("{tmp}", str(tmp_path)))


def crafted(tmp_path: Path, **model_settings) -> Path:
    """A valid checkpoint file whose config was edited by hand."""
    content = copy.deepcopy(payload(make_model()))
    content["config"]["model"].update(model_settings)
    path = tmp_path / "crafted.pt"
    save_checkpoint(content, path)
    return path


@pytest.mark.parametrize("settings, expected", [
    ({"backbone": "no_such_net"},
     "the model config it holds cannot be built (model.backbone='no_such_net'"),
    ({"hidden_size": 12000}, "has shape (192, 32) in the checkpoint, but the config and vocabulary give (48000, 32)"),
    ({"num_layers": -1}, "invalid config or vocabulary inside the checkpoint (model.num_layers=-1"),
])
def test_crafted_checkpoint_config_is_named_before_any_large_allocation(tmp_path, settings, expected):
    """hidden_size 12000 would be 2.3 GB of LSTM weights (4H x H floats) if the model were built first."""
    path = crafted(tmp_path, **settings)
    result = subprocess.run([sys.executable, "-c", EVALUATION_WITH_PEAK_RSS, "--checkpoint", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert int(result.stdout.split()[-1]) < 1000  # MB: torch and the tiny checkpoint, no 2.3 GB model


@no_cuda
def test_cuda_on_a_machine_without_it_is_named_not_called_damage(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo.gr.Blocks, "launch", lambda *a, **k: pytest.fail("launched without a device"))
    checkpoint = str(tiny_run / "best.pt")
    assert evaluation_main(["--checkpoint", checkpoint, "--device", "cuda"]) == 2
    assert demo.main(["--checkpoint", checkpoint, "--device", "cuda"]) == 2
    assert train.main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", "train.device=cuda:0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: --device cuda: CUDA is not available on this machine; use --device cpu"] * 2 + [
        "error: train.device=cuda:0: CUDA is not available on this machine; use train.device=cpu"]


def crafted_entries(tmp_path: Path, case: str) -> Path:
    """A valid checkpoint file with its 'model' entry replaced by hand, at runs/crafted/best.pt."""
    content = payload(make_model())
    weights = dict(content["model"])
    name = next(iter(weights))
    content["model"] = {"list": [1, 2], "tensors as lists": {key: [0.0] for key in weights},
                        "a NaN weight": {**weights, name: torch.full_like(weights[name], float("nan"))}}[case]
    path = tmp_path / "runs" / "crafted" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(content, path)
    return path


@pytest.mark.parametrize("case, expected", [
    ("list", "not a captioner checkpoint (its 'model' entry is not a dict of tensors)"),
    ("tensors as lists", "not a captioner checkpoint (its 'model' entry is not a dict of tensors)"),
    ("a NaN weight", "holds NaN or infinite values; the checkpoint cannot be used"),
])
def test_crafted_model_entries_are_refused_by_every_entry_point(untrained_checkpoint, tmp_path, capsys, monkeypatch,
                                                                case, expected):
    """A NaN-weight checkpoint used to load without a word and caption "are"; a 'model' entry that is
    not a dict of tensors crashed every entry point and kept the demo from starting."""
    from captioner.caption import main as caption_main

    path = crafted_entries(tmp_path, case)
    assert caption_main(["--checkpoint", str(path), str(REPO / "examples" / "images" / "photo_astronaut.jpg")]) == 2
    assert evaluation_main(["--checkpoint", str(path)]) == 2
    launched = []
    monkeypatch.setattr(demo.gr.Blocks, "launch", lambda app, **options: launched.append(app))
    monkeypatch.setattr(demo, "shipped_models", lambda: [])  # the runs alone: the shipped model would come first
    (tmp_path / "runs" / "good").mkdir()
    (tmp_path / "runs" / "good" / "best.pt").write_bytes(untrained_checkpoint.read_bytes())
    assert demo.main(["--runs-dir", str(tmp_path / "runs")]) == 0 and len(launched) == 1  # served without it
    lines = capsys.readouterr().err.strip().splitlines()
    prefixes = ["error: ", "error: ", "warning: skipping "]  # caption, evaluation, demo
    assert len(lines) == 3 and all(line.startswith(f"{prefix}{path}: ") and line.endswith(expected)
                                   for prefix, line in zip(prefixes, lines)), lines


def test_json_and_yaml_nested_100000_levels_deep_are_refused_in_one_line(tmp_path, capsys):
    """Python's parsers raise RecursionError (no ValueError) on such input: it used to be a traceback."""
    from captioner.demo.service import read_run_metrics

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "captions.json").write_text(f'{{"images": {deep}}}')
    (tmp_path / "config.yaml").write_text(f"train: {deep[90_000:-90_000]}")  # 10,000 levels: PyYAML is slower
    (tmp_path / "metrics.json").write_text(deep)
    assert train.main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", "data.format=karpathy",
                       f"data.root={tmp_path}", "data.captions_file=captions.json"]) == 2
    assert train.main(["--config", str(tmp_path / "config.yaml"), f"run_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'captions.json'}: not valid JSON (nested too deeply)",
        f"error: {tmp_path / 'config.yaml'}: not a plain YAML config (nested too deeply)"]
    assert read_run_metrics(tmp_path) == {}  # the demo's model summary: "no metrics.json yet", not a crash


def test_evaluation_output_on_a_full_disk_is_one_line_and_exit_4(tiny_run, tmp_path, capsys, monkeypatch):
    """After all the work: the metrics are printed, the file is not half-written, exit 4."""
    import errno

    from captioner import files

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)  # where a full disk fails a buffered write
    output = tmp_path / "metrics.json"
    assert evaluation_main(["--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--output", str(output)]) == 4
    captured = capsys.readouterr()
    assert "BLEU-4" in captured.out and captured.err.strip().splitlines()[-1] == (
        f"error: --output {output}: could not write it (No space left on device); the metrics are printed above")
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary left behind
