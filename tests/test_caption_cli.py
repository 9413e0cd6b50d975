"""`python -m captioner.caption` through its real entry point: a folder that mixes good and broken files,
globs, the three output formats, attention-map PNGs, and the exit status; hostile names and options,
outputs that cannot be written, pipes and FIFOs (in this process where no interpreter start-up is needed)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from captioner import load_checkpoint
from captioner.caption import find_images
from captioner.checkpoint import save_checkpoint
from captioner.config import to_dict
from captioner.images import load_image
from captioner.model import Captioner

EXAMPLES = sorted((REPO / "examples" / "images").glob("shapes_*.jpg"))


def run_caption(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.caption", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Two good scenes at the top, one in a subfolder, and three broken files with image names."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    shutil.copy(EXAMPLES[0], folder / "good_1.jpg")
    Image.open(EXAMPLES[1]).save(folder / "good_2.png")
    shutil.copy(EXAMPLES[2], folder / "more" / "good_3.jpg")
    (folder / "not_an_image.jpg").write_text("hello, I am text")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(EXAMPLES[0].read_bytes()[:300])
    (folder / "notes.txt").write_text("not looked at: a folder search keeps image suffixes only")
    return folder


def test_mixed_folder_captions_the_good_names_the_bad_and_exits_1(tiny_run, mixed_folder):
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--beam-size", "2", str(mixed_folder))
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    good = sorted(str(path) for path in mixed_folder.rglob("good_*"))
    assert sorted(line.split("\t")[0] for line in lines) == good
    model = load_checkpoint(tiny_run / "best.pt")
    expected = model.caption([load_image(path) for path in good], replace(model.decoding, beam_size=2))  # the same generate(), same loader
    assert dict(line.split("\t") for line in lines) == dict(zip(good, expected))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    for name in ("not_an_image.jpg", "empty.png", "truncated.jpg"):
        assert sum(name in line for line in errors) == 1, errors
    assert "Traceback" not in result.stderr and "notes.txt" not in result.stdout + result.stderr


def test_globs_jsonl_with_alternatives_and_exit_0(tiny_run, mixed_folder):
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--format", "jsonl", "--beam-size", "3",
                         "--batch-size", "1", str(mixed_folder / "good_*"), str(mixed_folder / "**" / "good_3.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(record["file"]).name for record in records] == ["good_1.jpg", "good_2.png", "good_3.jpg"]
    for record in records:
        alternatives = record["alternatives"]
        assert len(alternatives) == 3 and alternatives[0]["caption"] == record["caption"]
        scores = [alternative["log_prob"] for alternative in alternatives]
        assert scores[0] == record["log_prob"] < 0 and all(score <= 0 for score in scores)


def test_csv_sampling_and_attention_maps(tiny_run, mixed_folder, tmp_path):
    maps = tmp_path / "maps"
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--format", "csv", "--temperature", "0.7",
                         "--seed", "1", "--attention-maps", str(maps), str(mixed_folder / "good_1.jpg"),
                         str(mixed_folder / "more"), str(mixed_folder / "missing.jpg"))
    assert result.returncode == 1  # missing.jpg: named on stderr, the others captioned
    assert result.stderr.strip().splitlines() == [f"error: {mixed_folder / 'missing.jpg'}: no such file or folder"]
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["file", "caption", "log_prob"] and len(rows) == 3
    assert sorted(path.name for path in maps.iterdir()) == ["good_1.png", "good_3.png"]
    for path in maps.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300


def test_refusals_exit_2(tiny_run, tmp_path):
    result = run_caption("--checkpoint", str(tmp_path / "none.pt"), str(EXAMPLES[0]))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "none.pt" in result.stderr
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--beam-size", "0", str(EXAMPLES[0]))
    assert result.returncode == 2 and "--beam-size" in result.stderr
    result = run_caption("--checkpoint", str(tiny_run / "best.pt"), "--device", "gpu0", str(EXAMPLES[0]))
    assert result.returncode == 2 and "--device 'gpu0': expected cpu, cuda or cuda:N" in result.stderr


def test_attention_maps_of_a_model_without_attention_are_refused_with_a_sentence(tiny_run, tmp_path):
    config = load_checkpoint(tiny_run / "best.pt").run_config
    config.model.attention = False  # Show and Tell: one image vector, no weights to draw
    model = Captioner(config.model, load_checkpoint(tiny_run / "best.pt").vocab)
    save_checkpoint({"config": to_dict(config), "vocab": model.vocab.to_dict(), "model": model.state_dict()},
                    tmp_path / "plain.pt")
    result = run_caption("--checkpoint", str(tmp_path / "plain.pt"), "--attention-maps", str(tmp_path / "maps"),
                         str(EXAMPLES[0]))
    assert result.returncode == 2 and "has no attention" in result.stderr and not (tmp_path / "maps").exists()
    assert run_caption("--checkpoint", str(tmp_path / "plain.pt"), str(EXAMPLES[0])).returncode == 0


def test_find_images_keeps_order_and_drops_duplicates(mixed_folder):
    top = str(mixed_folder / "good_1.jpg")
    found, errors = find_images([top, str(mixed_folder), str(mixed_folder / "nothing_*.jpg")])
    assert found[0] == top and found.count(top) == 1
    assert {Path(path).name for path in found} == {"good_1.jpg", "good_2.png", "good_3.jpg", "not_an_image.jpg",
                                                   "empty.png", "truncated.jpg"}
    assert errors == [f"{mixed_folder / 'nothing_*.jpg'}: no file matches this pattern"]


# --- what a hostile command line or a broken output gets: one line, a documented exit status --------------

def caption_in_process(*arguments: str, stdout=None) -> tuple[int, str]:
    """captioner.caption.main in this process (no interpreter start-up): (exit status, stderr)."""
    import contextlib

    from captioner.caption import main

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(stdout or io.StringIO()):
        try:
            code = main(list(arguments))
        except SystemExit as stop:
            code = stop.code
    return code, errors.getvalue()


def test_file_names_never_forge_a_record_in_any_format(tiny_run, tmp_path):
    names = ["plain.jpg", "x\nfake.jpg\tforged.jpg", '"quoted.jpg', os.fsdecode(b"\xff-latin1.jpg")]
    for name in names:
        shutil.copy(EXAMPLES[0], tmp_path / name)
    paths = sorted(str(tmp_path / name) for name in names)
    outputs = {}
    for format_name in ("text", "jsonl", "csv"):
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")  # PYTHONIOENCODING=utf-8:strict
        code, errors = caption_in_process("--checkpoint", str(tiny_run / "best.pt"), "--format", format_name,
                                          "--beam-size", "1", str(tmp_path), stdout=stdout)
        stdout.flush()
        assert code == 0 and errors == "", errors
        outputs[format_name] = raw.getvalue().decode("utf-8")
    text = [line.split("\t") for line in outputs["text"].splitlines()]
    assert all(len(fields) == 2 for fields in text) and len(text) == len(names)  # one record per file, no more
    assert sorted(json.loads(name) if name.startswith('"') else name for name, _ in text) == paths
    assert "/plain.jpg\t" in outputs["text"] and '"' not in outputs["text"].split("plain.jpg")[0][-2:]
    assert sorted(json.loads(line)["file"] for line in outputs["jsonl"].splitlines()) == paths
    rows = list(csv.reader(io.StringIO(outputs["csv"])))[1:]
    assert len(rows) == len(names) and str(tmp_path / names[1]) in [row[0] for row in rows]


@pytest.mark.parametrize("option, value", [
    ("--temperature", "inf"), ("--temperature", "nan"), ("--temperature", "-1"), ("--threads", "-1"),
    ("--no-repeat-ngram-size", "-3"), ("--beam-size", "0"), ("--max-length", "0"), ("--batch-size", "0"),
    ("--seed", "-1"), ("--beam-size", "two"),
])
def test_every_numeric_option_is_refused_in_one_line_with_exit_2(tiny_run, option, value):
    code, errors = caption_in_process("--checkpoint", str(tiny_run / "best.pt"), option, value, str(EXAMPLES[0]))
    assert code == 2 and errors.count("\n") == 1 and errors.startswith("error: ") and option in errors, errors


def test_outputs_that_cannot_be_written_get_one_line_and_exit_4(tiny_run, tmp_path):
    checkpoint = str(tiny_run / "best.pt")
    with open("/dev/full", "w") as full:  # every write: ENOSPC, as a full disk
        code, errors = caption_in_process("--checkpoint", checkpoint, str(EXAMPLES[0]), stdout=full)
    assert code == 4 and errors == "error: cannot write the captions to stdout (No space left on device)\n"
    (tmp_path / "a-file").write_text("in the way")
    code, errors = caption_in_process("--checkpoint", checkpoint, "--attention-maps", str(tmp_path / "a-file" / "maps"),
                                      str(EXAMPLES[0]))
    assert code == 2 and errors == f"error: --attention-maps {tmp_path / 'a-file' / 'maps'}: a file is in the way; name a folder\n"


def test_a_closed_pipe_ends_quietly_with_141(tiny_run):
    """`... | head -1`: the reader is gone before the first caption; no traceback, no "Exception ignored"."""
    command = [sys.executable, "-m", "captioner.caption", "--checkpoint", str(tiny_run / "best.pt"), *map(str, EXAMPLES)]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader quits at once
    errors = child.stderr.read().decode()
    assert child.wait(timeout=180) == 141 and errors == ""


@pytest.mark.timeout(60)  # a FIFO used to block forever
def test_pipes_fifos_and_devices_are_named_never_waited_on(tiny_run, tmp_path):
    """An image piped to /dev/stdin was "empty (0 bytes)"; a FIFO blocked forever. Both are named, exit 1.
    /proc/self/fd/N of a pipe is what /dev/stdin is when a shell pipes into the command."""
    fifo = tmp_path / "images.fifo"
    os.mkfifo(fifo)
    reader, writer = os.pipe()
    os.write(writer, EXAMPLES[0].read_bytes()[:4096])
    stdout = io.StringIO()
    try:
        code, errors = caption_in_process("--checkpoint", str(tiny_run / "best.pt"), f"/proc/self/fd/{reader}",
                                          str(fifo), "/dev/zero", str(EXAMPLES[0]), stdout=stdout)
    finally:
        os.close(reader), os.close(writer)
    assert code == 1 and stdout.getvalue().startswith(f"{EXAMPLES[0]}\t")
    assert errors.splitlines() == [
        f"error: /proc/self/fd/{reader}: not a regular file (a pipe or FIFO); only image files are read",
        f"error: {fifo}: not a regular file (a pipe or FIFO); only image files are read",
        "error: /dev/zero: not a regular file (a character device); only image files are read"]
