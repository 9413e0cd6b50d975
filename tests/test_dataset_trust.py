"""A downloaded dataset is not trusted: every reader refuses in one line naming the file and the line
or entry, never loses lines silently, never reads outside the dataset, and never lets one photo into two
splits. Tiny files written here; each class also through train.py (and metrics go out without the
dataset's absolute paths)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO
from test_data_readers import coco_file, karpathy_entry, quiet, write_coco, write_image, write_json

import train
from captioner.config import DataConfig
from captioner.data import load_dataset
from captioner.data.coco import read_coco
from captioner.data.flickr8k import read_flickr8k, read_token_file
from captioner.data.folder import read_caption_csv, read_folder
from captioner.data.karpathy import read_karpathy
from captioner.data.records import DatasetFormatError
from captioner.evaluation import main as evaluation_main

CONFIG = str(REPO / "configs/shapes.yaml")
OUTSIDE = "the dataset's image folder; expected a relative path without '..'"


def refusal(read, *args, **kwargs) -> str:
    with pytest.raises(DatasetFormatError) as error:
        read(*args, **kwargs)
    return str(error.value)


def train_refuses(root: Path, capsys, *overrides: str) -> str:
    """train.py on the dataset at root: exit 2, one line on stderr, nothing written in the run directory."""
    run_dir = root / "run"
    code = train.main(["--config", CONFIG, f"data.root={root}", f"run_dir={run_dir}", "train.threads=1", *overrides])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.count("\n") == 0, message
    assert not run_dir.exists() or not list(run_dir.iterdir())
    return message


def caption_rows(count: int, stray_quote_at: int | None = None, length: int = 1) -> str:
    """Header plus `count` rows `imgN.png,caption`; row number `stray_quote_at` (its line is that + 1)
    opens a quote it never closes."""
    rows = []
    for index in range(count):
        quote = '"' if index == stray_quote_at else ""
        rows.append(f"img{index}.png,{quote}A dog runs on the grass{' and runs' * length} .\n")
    return "image,caption\n" + "".join(rows)


# --- a stray quote never eats the rest of the file ------------------------------------------------------------

@pytest.mark.parametrize("name", ["captions.txt", "captions.csv"])
@pytest.mark.parametrize("length", [1, 40], ids=["small", "past_the_csv_field_limit"])  # 500 x 370 > 131,072
def test_a_stray_quote_is_refused_at_its_line(tmp_path, name, length):
    path = tmp_path / name
    path.write_text(caption_rows(500 if length > 1 else 40, stray_quote_at=10, length=length))
    read = (lambda: read_flickr8k(path, tmp_path, log=quiet)) if name == "captions.txt" else (
        lambda: read_folder(path, tmp_path))
    message = refusal(read)
    assert message.startswith(f"{path}:12: a quote is opened and never closed")


def test_quotes_that_the_formats_allow_still_parse(tmp_path):
    (tmp_path / "captions.txt").write_text('image,caption\na.png,"A dog, ""Rex"", runs ."\na.png,A 5" dog .\n')
    (tmp_path / "Flickr8k.token.txt").write_text('a.png#0\tA "quoted dog .\na.png#1\tA dog .\n')
    assert read_caption_csv(tmp_path / "captions.txt").captions == {"a.png": ['A dog, "Rex", runs .', 'A 5" dog .']}
    # the token file has no quoting: every line is read as it is
    assert read_token_file(tmp_path / "Flickr8k.token.txt") == {"a.png": ['A "quoted dog .', "A dog ."]}


def test_a_json_key_given_twice_is_refused(tmp_path):
    entry = json.dumps(karpathy_entry("a.png"))
    (tmp_path / "dataset.json").write_text(f'{{"images": [{entry}, {entry}],\n "images": [{entry}]}}')
    assert refusal(read_karpathy, tmp_path / "dataset.json", tmp_path) == (
        f"{tmp_path / 'dataset.json'}: the key 'images' appears twice in one JSON object; keep one")
    write_coco(tmp_path)
    (tmp_path / "annotations" / "captions_val2014.json").write_text(
        '{"images": [{"id": 1, "file_name": "a.jpg", "id": 2}], "annotations": []}')
    assert "the key 'id' appears twice" in refusal(read_coco, tmp_path / "annotations", tmp_path, log=quiet)


def flickr8k_dataset(root: Path, captions: str, num_images: int = 12) -> Path:
    for index in range(num_images):
        write_image(root / "Images" / f"img{index}.png")
    (root / "captions.txt").write_bytes(captions.encode("utf-8") if isinstance(captions, str) else captions)
    return root


def test_train_refuses_a_stray_quote_naming_the_line(tmp_path, capsys):
    root = flickr8k_dataset(tmp_path / "data", caption_rows(12, stray_quote_at=3))
    message = train_refuses(root, capsys, "data.format=flickr8k")
    assert f"{root.resolve() / 'captions.txt'}:5: a quote is opened and never closed" in message


# --- text that is not UTF-8 ----------------------------------------------------------------------------------

LATIN_1 = "Un caf\xe9 .".encode("latin-1")  # byte 0xe9 alone is not UTF-8


@pytest.mark.parametrize("name", ["captions.txt", "Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "captions.csv",
                                  "dataset.json", "annotations/captions_val2014.json"])
def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, name):
    root = tmp_path
    lines = {"captions.txt": [b"image,caption", b"a.png,A dog .", b"b.png," + LATIN_1],
             "Flickr8k.token.txt": [b"a.png#0\tA dog .", b"", b"b.png#0\t" + LATIN_1],
             "Flickr_8k.trainImages.txt": [b"a.png", b"", b"b\xe9.png"],
             "captions.csv": [b"image,caption,split", b"a.png,A dog .,train", b"b.png," + LATIN_1 + b",val"],
             "dataset.json": [b'{"images": [', json.dumps(karpathy_entry("a.png")).encode() + b",",
                              b'{"filename": "' + LATIN_1 + b'"}]}'],
             "annotations/captions_val2014.json": [b'{"images": [],', b'"annotations": [],', b'"info": "' + LATIN_1 + b'"}']}
    if name.startswith("annotations/"):
        write_coco(root)
    if name == "Flickr_8k.trainImages.txt":
        (root / "captions.txt").write_text("image,caption\na.png,A dog .\n")
    (root / name).write_bytes(b"\n".join(lines[name]) + b"\n")
    readers = {"captions.txt": lambda: read_flickr8k(root / name, root, log=quiet),
               "Flickr8k.token.txt": lambda: read_flickr8k(root / name, root, log=quiet),
               "Flickr_8k.trainImages.txt": lambda: read_flickr8k(root / "captions.txt", root, log=quiet),
               "captions.csv": lambda: read_folder(root / name, root),
               "dataset.json": lambda: read_karpathy(root / name, root),
               "annotations/captions_val2014.json": lambda: read_coco(root / "annotations", root, log=quiet)}
    assert refusal(readers[name]).startswith(f"{root / name}:3: not UTF-8 (byte 0xe9)")


def test_train_refuses_bytes_that_are_not_utf8_naming_the_line(tmp_path, capsys):
    root = flickr8k_dataset(tmp_path / "data", b"image,caption\nimg0.png,A dog .\nimg1.png," + LATIN_1 + b"\n")
    message = train_refuses(root, capsys, "data.format=flickr8k")
    assert message == f"error: {root.resolve() / 'captions.txt'}:3: not UTF-8 (byte 0xe9); save the file as UTF-8"


# --- paths that leave the dataset ----------------------------------------------------------------------------

@pytest.mark.parametrize("entry, where", [
    (karpathy_entry("/etc/hostname"), "images[1]"),
    (karpathy_entry("../outside.png"), "images[1]"),
    (karpathy_entry("a.png", filepath=".."), "images[1]"),
    (karpathy_entry("a.png", filepath="/tmp"), "images[1]"),
])
def test_karpathy_paths_outside_the_dataset_are_refused(tmp_path, entry, where):
    json_path = write_json(tmp_path / "dataset.json", {"images": [karpathy_entry("b.png"), entry]})
    message = refusal(read_karpathy, json_path, tmp_path)
    assert message.startswith(f"{json_path}: {where}: image path ") and message.endswith(OUTSIDE)


@pytest.mark.parametrize("file_name", ["../train2014/t1.jpg", "/etc/hostname", "a/../../b.jpg"])
def test_coco_file_names_outside_their_folder_are_refused(tmp_path, file_name):
    write_coco(tmp_path)
    write_json(tmp_path / "annotations" / "captions_val2014.json", coco_file([(5, "v.jpg"), (6, file_name)], []))
    message = refusal(read_coco, tmp_path / "annotations", tmp_path, log=quiet)
    assert message.startswith(f"{tmp_path / 'annotations' / 'captions_val2014.json'}: images[1].file_name: image path")
    assert message.endswith(OUTSIDE)


@pytest.mark.parametrize("name, text", [
    ("captions.csv", "image,caption,split\na.png,A dog .,train\n/etc/hostname,A file .,test\n"),
    ("captions.csv", "image,caption\na.png,A dog .\n../../secret.png,A file .\n"),
    ("captions.txt", "image,caption\na.png,A dog .\n../secret.png,A file .\n"),
    ("Flickr8k.token.txt", "a.png#0\tA dog .\n\n../secret.png#0\tA file .\n"),
])
def test_csv_and_token_paths_outside_the_dataset_are_refused(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    read = (lambda: read_folder(tmp_path / name, tmp_path)) if name.endswith(".csv") else (
        lambda: read_flickr8k(tmp_path / name, tmp_path, log=quiet))
    message = refusal(read)
    assert message.startswith(f"{tmp_path / name}:3: image path ") and message.endswith(OUTSIDE)


def test_train_refuses_an_absolute_path_to_a_real_image_outside_the_dataset(tmp_path, capsys):
    secret = write_image(tmp_path / "private" / "photo.png")
    root = tmp_path / "data"
    for index in range(6):
        write_image(root / "images" / f"{index}.png")
    rows = [f"{index}.png,A red box .,{'train' if index < 4 else 'val'}" for index in range(6)]
    (root / "captions.csv").write_text("\n".join(["image,caption,split", *rows, f"{secret},A red box .,train"]) + "\n")
    message = train_refuses(root, capsys, "data.format=folder")
    assert message == f"error: {root.resolve() / 'captions.csv'}:8: image path {str(secret)!r} is not inside {OUTSIDE}"


def test_metrics_hold_no_absolute_dataset_path(tiny_run, tmp_path):
    examples = json.loads((tiny_run / "metrics.json").read_text())["examples"]
    output = tmp_path / "evaluation.json"
    assert evaluation_main(["--checkpoint", str(tiny_run / "best.pt"), "--split", "test", "--beam-size", "1", "--no-meteor",
                            "--output", str(output)]) == 0
    examples += json.loads(output.read_text())["captions"]
    data_root = tiny_run.parent / "data"
    assert examples and all(not os.path.isabs(example["image"]) for example in examples)
    assert all((data_root / example["image"]).is_file() for example in examples)  # relative to data.root


# --- one photo in two splits --------------------------------------------------------------------------------

def test_karpathy_same_image_written_two_ways_is_refused(tmp_path):
    entries = [karpathy_entry("00000.jpg", "train"), karpathy_entry("./00000.jpg", "test")]
    json_path = write_json(tmp_path / "dataset.json", {"images": entries})
    assert refusal(read_karpathy, json_path, tmp_path) == (
        f"{json_path}: images[1]: duplicate image '00000.jpg' (also images[0])")


def test_coco_ids_sharing_one_file_name_are_refused(tmp_path):
    write_coco(tmp_path)
    write_json(tmp_path / "annotations" / "captions_val2014.json",
               coco_file([(5, "v.jpg"), (6, "./v.jpg")], [(5, "a cap"), (6, "b cap")]))
    message = refusal(read_coco, tmp_path / "annotations", tmp_path, log=quiet)
    assert message == (f"{tmp_path / 'annotations' / 'captions_val2014.json'}: images[1].file_name: v.jpg is also "
                       "image id 5; list each photo once")


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symbolic_link", "hard_link"])
def test_one_file_under_two_names_in_train_and_test_is_refused(tmp_path, link):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "images" / name)
    link(tmp_path / "images" / "a.png", tmp_path / "images" / "copy.png")
    (tmp_path / "captions.csv").write_text(
        "image,caption,split\na.png,x,train\nb.png,y,val\nc.png,z,test\ncopy.png,w,test\n")
    message = refusal(load_dataset, DataConfig(format="folder", root=str(tmp_path)), log=quiet)
    assert message == (f"{tmp_path.resolve()}: images 'a.png' (train) and 'copy.png' (test) are the same file, "
                       f"{tmp_path.resolve() / 'images' / 'copy.png'} (test or val images would be trained on); "
                       "list each photo once")


def test_train_refuses_a_test_image_that_is_a_train_image(tmp_path, capsys):
    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "Images" / f"{index:05d}.jpg")
    entries = [karpathy_entry(f"{index:05d}.jpg", "train") for index in range(3)]
    entries += [karpathy_entry("00003.jpg", "val"), karpathy_entry("./00000.jpg", "test")]
    json_path = write_json(root / "dataset_flickr8k.json", {"images": entries})
    message = train_refuses(root, capsys, "data.format=karpathy")
    assert message == f"error: {json_path.resolve()}: images[4]: duplicate image '00000.jpg' (also images[0])"


# --- the Karpathy image folder is chosen by evidence -----------------------------------------------------------

def karpathy_dataset(root: Path, folder: str, num_images: int, missing: tuple[int, ...]) -> Path:
    for index in range(num_images):
        if index not in missing:
            write_image(root / folder / f"{index}.jpg")
    entries = [karpathy_entry(f"{index}.jpg", "train" if index % 4 else "val") for index in range(num_images)]
    return write_json(root / "dataset_flickr8k.json", {"images": entries})


def test_karpathy_folder_is_the_one_that_holds_the_images_when_the_first_is_missing(tmp_path):
    karpathy_dataset(tmp_path, "Flicker8k_Dataset", num_images=20, missing=(0,))
    messages = []
    splits = load_dataset(DataConfig(format="karpathy", root=str(tmp_path), max_bad_images=0.1), log=messages.append)
    folder = tmp_path.resolve() / "Flicker8k_Dataset"
    assert all(Path(record.path).parent == folder for records in splits.values() for record in records)
    assert f"1 of 20 images (5.0%) are missing or unusable: {folder / '0.jpg'} (missing)" in messages[0]


def test_karpathy_without_its_images_in_any_folder_names_the_folders(tmp_path):
    json_path = karpathy_dataset(tmp_path, "elsewhere", num_images=5, missing=tuple(range(5)))
    message = refusal(load_dataset, DataConfig(format="karpathy", root=str(tmp_path)), log=quiet)
    root = tmp_path.resolve()
    assert message == (f"{root / json_path.name}: none of 5 of its images (e.g. 0.jpg) is in any of {root}, "
                       f"{root / 'Images'}, {root / 'images'}, {root / 'Flicker8k_Dataset'}, "
                       f"{root / 'flickr30k-images'}, {root / 'flickr30k_images'}; set data.images_dir")


def test_train_names_the_right_folder_when_the_first_image_is_missing(tmp_path, capsys):
    root = tmp_path / "data"
    karpathy_dataset(root, "Flicker8k_Dataset", num_images=8, missing=(0,))
    message = train_refuses(root, capsys, "data.format=karpathy", "data.max_bad_images=0")
    assert f"1 of 8 images (12.5%) are missing or unusable: {root.resolve() / 'Flicker8k_Dataset' / '0.jpg'}" in message
