"""Reliability of checkpoints, beyond tests/test_checkpoint.py.

A crash while writing (not only at the rename), bad --resume targets (missing, a directory of leftovers,
damaged, another model), an unwritable run directory (a full disk: test_writes.py), one
`torch.load(weights_only=True)` and never a retry, flipped bits caught by the zip checksums, a vocabulary
that does not fit the embedding, and the evaluation command on a missing file.
"""
from __future__ import annotations

import errno
import random
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides
from test_checkpoint import _Exploit, payload
from test_model import CAPTIONS, make_model

import train
from captioner import CheckpointError, load_checkpoint
from captioner.checkpoint import save_checkpoint
from captioner.config import load_config, to_dict
from captioner.evaluation import main as evaluation_main
from captioner.training.progress import check_resume_changes, resume_target
from captioner.vocab import Vocabulary

CONFIG = str(REPO / "configs/shapes.yaml")


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    save_checkpoint(payload(make_model()), path)
    return path, path.read_bytes()


# --- case 5: a crash in the middle of writing, not only at the rename ---------------------------------------

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "ctrl_c"])
def test_crash_while_writing_keeps_the_previous_file_and_leaves_no_partial_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    save_checkpoint(payload(make_model()), path)
    before = path.read_bytes()

    def write_half_then_fail(data, handle, *args, **kwargs):
        handle.write(before[: len(before) // 2])
        raise failure

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(type(failure)) as raised:
        save_checkpoint(payload(make_model(num_layers=1)), path)
    if isinstance(failure, OSError):
        assert str(raised.value) == f"could not write {path} (No space left on device); the file there before is kept"
        assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- case 8: a bad --resume target is an error, never a fresh start ------------------------------------------

def resume(tmp_path: Path, target: Path, *extra: str) -> int:
    """train.py --resume target; the data root does not exist, so any attempt to train would fail differently."""
    overrides = tiny_overrides(tmp_path / "no-data", tmp_path / "new-run")
    return train.main(["--config", CONFIG, "--resume", str(target), *overrides, *extra])


def leftover_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "interrupted"
    directory.mkdir()
    (directory / ".last.pt.k2x9q.tmp").write_bytes(b"PK\x03\x04 an unfinished save")
    return directory


def checkpoint_with_hidden_size_48(tmp_path: Path) -> Path:
    config = load_config(CONFIG, tiny_overrides(tmp_path / "no-data", tmp_path / "old-run"))
    path = tmp_path / "old.pt"
    save_checkpoint({"config": to_dict(config), "vocab": {}, "model": {}}, path)  # tiny_overrides: hidden 48
    return path


def damaged_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "cut.pt"
    save_checkpoint(payload(make_model()), path)
    path.write_bytes(path.read_bytes()[:-1000])
    return path


@pytest.mark.parametrize("make_target, extra, expected", [
    (lambda tmp: tmp / "missing.pt", (), "missing.pt: checkpoint not found"),
    (leftover_directory, (), "a directory must hold last.pt, found only unfinished temporary files (.last.pt.k2x9q.tmp)"),
    (lambda tmp: tmp, (), "a directory must hold last.pt, found no last.pt"),
    (damaged_checkpoint, (), "cut.pt: checkpoint is damaged"),
    (checkpoint_with_hidden_size_48, ("model.hidden_size=64",),
     "old.pt: model.hidden_size is 48 in the checkpoint but 64 in this run's config"),
], ids=["nonexistent", "only_temporary_files", "empty_directory", "damaged", "other_model"])
def test_bad_resume_target_is_refused_before_anything_is_written(tmp_path, capsys, make_target, extra, expected):
    target = make_target(tmp_path)
    code = resume(tmp_path, target, *extra)
    output = capsys.readouterr()
    assert code == 2
    assert expected in output.err, output.err
    assert not (tmp_path / "new-run").exists()  # no run directory, no checkpoint, no fresh start
    assert "data:" not in output.out


def test_a_checkpoint_from_before_a_model_key_existed_still_resumes(tmp_path):
    # Saved by a version without model.image_size: the missing key is its default, as load_checkpoint reads it.
    config = load_config(CONFIG, tiny_overrides(tmp_path / "data", tmp_path / "run"))
    saved = to_dict(config)
    del saved["model"]["image_size"]
    check_resume_changes({"config": saved}, config, "old.pt")  # no error
    saved["model"]["hidden_size"] += 1
    with pytest.raises(CheckpointError, match="old.pt: model.hidden_size is 49 in the checkpoint but 48"):
        check_resume_changes({"config": saved}, config, "old.pt")


def test_resume_directory_means_its_last_pt(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"")
    assert resume_target(tmp_path) == tmp_path / "last.pt"
    assert resume_target(tmp_path / "best.pt") == tmp_path / "best.pt"  # a file is taken as given


# --- case 9: an unwritable run directory (a full disk: tests/test_writes.py) ------------------------------

def test_run_dir_that_cannot_be_created_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # tests run as root, so chmod would not stop the write
    code = train.main(["--config", CONFIG, *tiny_overrides(tmp_path / "no-data", blocker / "run")])
    output = capsys.readouterr()
    assert code == 2
    assert f"run_dir={blocker / 'run'}: not writable" in output.err
    assert "data:" not in output.out  # refused before the dataset was read


# --- case 11: exactly one weights_only load, never a retry without it -----------------------------------------

def test_malicious_checkpoint_gets_exactly_one_weights_only_load(tmp_path, monkeypatch):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker), "config": {}, "format_version": 1}, path)
    calls, real_load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError, match="evil.pt: refused to load"):
        load_checkpoint(path)
    assert calls == [True] and not marker.exists()


# --- case 12: flipped bits are caught by the archive's checksums -------------------------------------------

def record_offset(path: Path, name_suffix: str) -> tuple[int, int]:
    """(start, size) in the file of the bytes of the archive record whose name ends with name_suffix."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def largest_tensor_record(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename


@pytest.mark.parametrize("record", ["largest tensor", "data.pkl"])
def test_a_flipped_bit_is_reported_as_damage(checkpoint_bytes, tmp_path, record):
    path, original = checkpoint_bytes
    name = largest_tensor_record(path) if record == "largest tensor" else "data.pkl"
    start, size = record_offset(path, name)
    damaged = bytearray(original)
    damaged[start + size // 2] ^= 0x10  # one bit of one weight (or of the pickled structure)
    (tmp_path / "flipped.pt").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"flipped.pt: checkpoint is damaged \(checksum mismatch in"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_random_bit_flips_never_load_a_different_model(checkpoint_bytes, tmp_path):
    path, original = checkpoint_bytes
    reference = load_checkpoint(path).state_dict()
    rng, damaged_count = random.Random(6), 0
    for _ in range(30):
        damaged = bytearray(original)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        (tmp_path / "flipped.pt").write_bytes(bytes(damaged))
        try:
            state = load_checkpoint(tmp_path / "flipped.pt").state_dict()
        except CheckpointError as error:
            assert "checkpoint is damaged" in str(error)
            damaged_count += 1
            continue
        assert all(torch.equal(state[k], reference[k]) for k in reference)  # the flip hit unused padding
    assert damaged_count >= 25


# --- case 13: the vocabulary does not fit the embedding ------------------------------------------------------

def test_vocabulary_size_that_does_not_fit_the_embedding_names_both_shapes(tmp_path):
    model = make_model()
    bigger = Vocabulary.build([*CAPTIONS, "zebra giraffe"], min_count=1)
    size, embed = len(model.vocab), model.config.embed_size
    save_checkpoint({**payload(model), "vocab": bigger.to_dict()}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=rf"mixed.pt: .*shape \({size}, {embed}\) in the checkpoint, "
                                              rf"but the config and vocabulary give \({len(bigger)}, {embed}\)"):
        load_checkpoint(tmp_path / "mixed.pt")


# --- case 14: evaluation without a usable checkpoint ---------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("missing.pt", None, "missing.pt: checkpoint not found"),
    ("empty.pt", b"", "empty.pt: checkpoint is damaged"),
])
def test_evaluation_exits_2_naming_the_checkpoint(tmp_path, capsys, name, content, expected):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    output = tmp_path / "metrics.json"
    code = evaluation_main(["--checkpoint", str(tmp_path / name), "--output", str(output)])
    message = capsys.readouterr().err
    assert code == 2 and expected in message and str(tmp_path) in message
    assert not output.exists()
    assert "Traceback" not in message
