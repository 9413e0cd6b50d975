"""The image check before training decodes every image as training will: a truncated JPEG, a format
outside the allowlist, a 21:1 strip and a 49-megapixel image are found before the first step (not
mid-epoch, not in the test evaluation after the last epoch), skipped up to data.max_bad_images with
their full paths named, and above it the run is refused. Through train.py on a folder dataset."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

import train

CONFIG = str(REPO / "configs/shapes.yaml")
GOOD = {"train": 16, "val": 4, "test": 4}
TINY = ["model.embed_size=16", "model.hidden_size=16", "train.epochs=1", "train.batch_size=8", "train.threads=1",
        "train.warmup_steps=0", "data.min_word_count=1", "eval.beam_size=1"]


def jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 60, 30)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_bad_images(images: Path) -> dict[str, str]:
    """Four images whose headers read fine but which the loader refuses -> name: split."""
    whole = jpeg_bytes((256, 256))
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # a download cut short
    Image.new("RGB", (64, 64)).save(images / "portable.ppm")  # PPM: not in the format allowlist
    Image.new("RGB", (420, 20)).save(images / "strip.png")  # 21:1
    Image.new("1", (7000, 7000)).save(images / "huge.png")  # 49 MP, under PIL's own bomb limit
    return {"truncated.jpg": "test", "portable.ppm": "train", "strip.png": "val", "huge.png": "train"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check")
    images = root / "images"
    images.mkdir()
    rows = ["image,caption,split"]
    for split, count in GOOD.items():
        for index in range(count):
            (images / f"{split}{index}.jpg").write_bytes(jpeg_bytes())
            rows.append(f"{split}{index}.jpg,a red square,{split}")
    rows += [f"{name},a red square,{split}" for name, split in write_bad_images(images).items()]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


def run(dataset: Path, run_dir: Path, max_bad_images: float) -> int:
    return train.main(["--config", CONFIG, "data.format=folder", f"data.root={dataset}", f"run_dir={run_dir}",
                       f"data.max_bad_images={max_bad_images}", *TINY])


def test_images_training_would_refuse_are_skipped_by_the_check_naming_full_paths(dataset, tmp_path, capsys):
    code = run(dataset, tmp_path / "run", max_bad_images=0.15)  # 4 of 28 = 14.3 %
    output = capsys.readouterr()
    assert code == 0, output.err[-2000:]
    warning = [line for line in output.out.splitlines() if line.startswith("warning: skipping")]
    assert len(warning) == 1 and "4 of 28 images (14.3%) are missing or unusable" in warning[0]
    reasons = {"truncated.jpg": "truncated or corrupt image data", "portable.ppm": "not a supported image (expected JPEG",
               "strip.png": "aspect ratio 21.0:1", "huge.png": "the image declares 7000x7000 = 49,000,000 pixels"}
    for name, reason in reasons.items():
        assert f"{dataset / 'images' / name} ({reason}" in warning[0], name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_images"] == GOOD["test"]  # the truncated test image left out


def test_more_bad_images_than_allowed_refuse_the_run_before_training(dataset, tmp_path, capsys):
    code = run(dataset, tmp_path / "run", max_bad_images=0.1)
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.count("\n") == 0, message
    assert "4 of 28 images (14.3%)" in message and "more than data.max_bad_images=10.0%" in message
    assert str(dataset / "images" / "huge.png") in message
    assert not list((tmp_path / "run").glob("*.pt"))
