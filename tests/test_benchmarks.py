"""The benchmark suite runs from its one command (tiny shapes with --quick), records where its numbers came
from, measures fairly (alternating turns), and the batched beam search it times gives identical captions;
first_run really runs train.py and reads back its time, its process tree's memory and its scores."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import common, first_run, run

MACHINE_KEYS = {"cpu", "logical_cores", "python", "torch", "threads", "load_average_1min", "omp_wait_policy"}


@pytest.fixture
def one_thread():
    """--threads 1 changes torch's global setting; give the rest of the session its threads back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(tmp_path, *names, extra=()):
    output = tmp_path / "results"
    assert run.main(["--quick", "--threads", "1", "--output", str(output), "--only", *names, *extra]) == 0
    return output


def test_first_run_is_optional_but_runnable():
    assert "first_run" in run.BENCHMARKS and "first_run" not in run.DEFAULT_BENCHMARKS, \
        "a plain `python -m benchmarks` must not train the default job three times"
    assert run.parse_args([]).only == list(run.DEFAULT_BENCHMARKS)


@pytest.mark.parametrize("name", run.BENCHMARKS)
def test_each_benchmark_runs_quick_and_writes_json(name, tmp_path, one_thread, capsys):
    output = _run(tmp_path, name)
    result = json.loads((output / f"{name}.json").read_text())
    assert result["benchmark"] == name and result["quick"] is True
    assert MACHINE_KEYS <= set(result["machine"]) and result["machine"]["threads"] == 1
    summary = json.loads((output / "summary.json").read_text())
    assert list(summary["results"]) == [name] and summary["machine"]["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "|---|" in printed, "each benchmark prints a Markdown table"
    if name == "first_run":  # it ran the real train.py (tiny overrides) twice
        _check_first_run(result)


def _check_first_run(result: dict) -> None:
    assert len(result["runs"]) == 2 and result["busy"] is False and result["commit"]
    for record in result["runs"]:
        assert record["wall_s"] > 0 and record["cpu_s"] > 0, record
        assert record["peak_tree_rss_mb"] > 50 and record["largest_process_rss_mb"] > 50, record
        assert record["sum_of_process_peaks_mb"] >= record["peak_tree_rss_mb"], record
        assert record["sum_of_process_peaks_mb"] >= record["largest_process_rss_mb"], record
        assert record["most_processes"] >= 1
        assert isinstance(record["bleu4"], (int, float)) and 0 <= record["content_accuracy"] <= 100
        assert record["relations_stated"] is not None and len(record["epoch_seconds"]) == 1
    summary = result["summary"]["wall_s"]
    assert summary["min"] <= summary["median"] <= summary["max"]


def test_first_run_fails_in_one_line_naming_the_log(tmp_path, capsys):
    output = tmp_path / "results"
    assert run.main(["--quick", "--output", str(output), "--only", "first_run",
                     "--train-overrides", "train.epochs=-1"]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("first_run: train.py exited 2") and "train.epochs" in message
    log = message.rsplit("its log: ", 1)[1]
    assert "train.epochs=-1" in open(log).read()
    shutil.rmtree(Path(log).parent)


def test_first_run_child_gets_no_omp_wait_policy_unless_the_user_set_one(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/run.py sets it for itself
    settings = common.Settings(output=Path("."), extra={"user_omp_wait_policy": None})
    env = first_run.child_environment(settings, Path("/checkout"))
    assert "OMP_WAIT_POLICY" not in env and env["PYTHONPATH"] == "/checkout"
    settings.extra["user_omp_wait_policy"] = "PASSIVE"
    assert first_run.child_environment(settings, Path("/checkout"))["OMP_WAIT_POLICY"] == "PASSIVE"


def test_first_run_memory_counts_the_whole_process_tree():
    """METEOR's Java is a child of train.py: the tree holds grandchildren too."""
    grandchild = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(3)'])"
    child = subprocess.Popen([sys.executable, "-c", grandchild])
    try:
        deadline = time.monotonic() + 3
        while len(first_run.descendants(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = first_run.descendants(child.pid)
        assert tree[0] == child.pid and len(tree) == 2, tree
        memory = first_run.TreeMemory(child.pid)
        memory.start()
        time.sleep(0.3)
        memory.stop()
        assert memory.most_processes == 2 and memory.peak_bytes > 2 * 1024 * 1024
        assert sum(memory.high_water.values()) >= memory.peak_bytes
    finally:
        child.wait()


def test_recurrent_measures_every_library_twin_against_its_reference(tmp_path, one_thread):
    result = json.loads((_run(tmp_path, "recurrent") / "recurrent.json").read_text())
    assert set(result["timings"]["cpu"]) == {"lstm", "gru", "rnn"}
    for cell, modes in result["timings"]["cpu"].items():
        assert set(modes) == {"forward", "train", "decode"}
        for mode, variants in modes.items():
            expected = {"ours", "torch", "reference"} if cell == "lstm" else {"ours", "torch"}
            assert set(variants) == expected, (cell, mode)
            assert all(v["min"] <= v["median"] and len(v["samples"]) == 2 for v in variants.values())
    assert set(result["ratios"]["cpu/lstm/train"]) == {"ours", "reference"}


def test_decoding_batched_output_is_identical_to_the_per_image_loop(tmp_path, one_thread):
    result = json.loads((_run(tmp_path, "decoding") / "decoding.json").read_text())
    keys = {f"{decoder}, beam {beam}" for decoder in ("show-and-tell", "attention") for beam in (1, 3, 5)}
    assert result["identical"] == {key: True for key in keys}
    assert set(result["speedup"]) == keys


def test_scaling_draws_the_plot(tmp_path, one_thread):
    plot = tmp_path / "scaling.png"
    output = _run(tmp_path, "scaling", extra=("--plot", str(plot)))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exponents = json.loads((output / "scaling.json").read_text())["exponents"]
    assert set(exponents) == {"batch", "length", "hidden"}


def test_measure_alternates_turns_and_reports_min_and_median():
    calls = []
    timings = common.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                              "c": lambda: calls.append("c")}, repeats=3, warmup=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"], "each repetition starts with another variant"
    for result in timings.values():
        assert len(result["samples"]) == 3 and 0 < result["min"] <= result["median"]
    fake = {"ours": {"min": 2.0, "median": 3.0, "cpu_min": 4.0}, "torch": {"min": 1.0, "median": 2.0, "cpu_min": 1.0}}
    assert common.ratio(fake, "ours", "torch") == {"min": 2.0, "median": 1.5, "cpu": 4.0}
    self_timed = common.measure({"x": lambda: 0.25}, repeats=2, warmup=0, self_timed=True)
    assert self_timed["x"]["min"] == 0.25 and self_timed["x"]["median"] == 0.25


def test_table_is_markdown():
    text = common.table("T", ["a", "b"], [[1, "x"]])
    assert text.splitlines() == ["**T**", "", "| a | b |", "|---|---|", "| 1 | x |"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_request_without_gpu_is_refused(tmp_path, capsys):
    assert run.main(["--device", "cuda", "--output", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
