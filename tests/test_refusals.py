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
    ("train.threads=-1", "train.threads=-1: expected a value in [0, inf)"),
    ("model.dropout=1.5", "model.dropout=1.5: expected a value in [0, 1)"),
    ("train.learning_rate=.nan", "train.learning_rate=nan: expected a value in (0, inf)"),
])
def test_numbers_out_of_range_are_refused_before_anything_is_written(tmp_path, capsys, override, expected):
    code = train.main(["--config", CONFIG, f"run_dir={tmp_path / 'run'}", override])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message == f"error: {expected}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--beam-size", "0"], "--beam-size 0: expected an integer >= 1"),
    (["--max-length", "0"], "--max-length 0: expected an integer >= 1"),
    (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size -1: expected an integer >= 0"),
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
