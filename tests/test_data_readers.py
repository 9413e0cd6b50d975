"""Dataset readers: every format on tiny files written here, every malformed case, the image check."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from captioner.config import ConfigError, DataConfig
from captioner.data import detect_format, load_dataset
from captioner.data.coco import read_coco
from captioner.data.flickr8k import read_flickr8k
from captioner.data.folder import random_split, read_caption_csv, read_folder
from captioner.data.karpathy import read_karpathy
from captioner.data.records import DatasetFormatError
from captioner.data.validate import validate_images

SAMPLE = Path(__file__).parents[2] / "shared" / "data" / "flickr8k-sample"


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 30, 30)).save(path)
    return path


def quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- Karpathy JSON

def karpathy_entry(filename: str, split: str = "train", **extra) -> dict:
    sentences = [{"raw": f"A photo of {filename} .", "tokens": ["a", "photo"]}, {"tokens": ["a", "cat"]}]
    return {"filename": filename, "split": split, "sentences": sentences, **extra}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_karpathy_coco_style_paths_ids_and_captions(tmp_path):
    entries = [karpathy_entry("a.jpg", "train", filepath="train2014", cocoid=7, scene={"objects": 1}),
               karpathy_entry("b.jpg", "test", filepath="val2014")]
    json_path = write_json(tmp_path / "dataset.json", {"images": entries})
    splits = read_karpathy(json_path, tmp_path)
    first, second = splits["train"][0], splits["test"][0]
    assert (first.image_id, first.path, first.scene) == ("7", str(tmp_path / "train2014" / "a.jpg"), {"objects": 1})
    assert first.captions == ("A photo of a.jpg .", "a cat")  # raw, then the tokens fallback
    assert (second.image_id, second.path, second.scene) == ("b.jpg", str(tmp_path / "val2014" / "b.jpg"), None)
    assert splits["val"] == []


def test_karpathy_picks_the_image_folder_that_holds_the_images(tmp_path):
    write_image(tmp_path / "Flicker8k_Dataset" / "a.jpg")
    json_path = write_json(tmp_path / "dataset_flickr8k.json", {"images": [karpathy_entry("a.jpg")]})
    splits = read_karpathy(json_path, [tmp_path, tmp_path / "Images", tmp_path / "Flicker8k_Dataset"])
    assert splits["train"][0].path == str(tmp_path / "Flicker8k_Dataset" / "a.jpg")


def test_karpathy_restval_joins_train_or_is_dropped(tmp_path):
    entries = [karpathy_entry("a.jpg", "train"), karpathy_entry("b.jpg", "restval"), karpathy_entry("c.jpg", "val")]
    json_path = write_json(tmp_path / "dataset.json", {"images": entries})
    with_restval = read_karpathy(json_path, tmp_path, use_restval=True)
    without = read_karpathy(json_path, tmp_path, use_restval=False)
    assert [r.image_id for r in with_restval["train"]] == ["a.jpg", "b.jpg"]
    assert all(r.split == "train" for r in with_restval["train"])
    assert [r.image_id for r in without["train"]] == ["a.jpg"]
    assert len(with_restval["val"]) == len(without["val"]) == 1


@pytest.mark.parametrize("data, expected", [
    ({"annotations": []}, "dataset.json: expected an object with an 'images' list"),
    ({"images": [karpathy_entry("a.jpg"), {**karpathy_entry("b.jpg"), "sentences": [{"raw": "ok"}, {"x": 1}]}]},
     "dataset.json: images[1].sentences[1]: expected 'raw' or 'tokens'"),
    ({"images": [{**karpathy_entry("a.jpg"), "sentences": []}]},
     "dataset.json: images[0].sentences: expected a non-empty list"),
    ({"images": [karpathy_entry("a.jpg"), karpathy_entry("a.jpg", "val")]},
     "dataset.json: images[1]: duplicate image 'a.jpg' (also images[0])"),
    ({"images": [karpathy_entry("a.jpg", "dev")]},
     "dataset.json: images[0].split: expected one of train, val, test, restval, got 'dev'"),
    ({"images": [{"split": "train", "sentences": [{"raw": "x"}]}]},
     "dataset.json: images[0].filename: expected a file name"),
])
def test_karpathy_malformed_input_names_file_and_json_path(tmp_path, data, expected):
    json_path = write_json(tmp_path / "dataset.json", data)
    with pytest.raises(DatasetFormatError) as error:
        read_karpathy(json_path, tmp_path)
    assert expected in str(error.value)


def test_karpathy_invalid_json_names_file_and_line(tmp_path):
    json_path = tmp_path / "dataset.json"
    json_path.write_text('{"images": [\n{"filename": }]}')
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: not valid JSON \(line 2"):
        read_karpathy(json_path, tmp_path)


# ---------------------------------------------------------------- Flickr8k

def write_flickr8k_lists(root: Path, train: list[str], dev: list[str]) -> None:
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n")


def test_kaggle_csv_oddities_parse(tmp_path):
    text = '\ufeffimage,caption\r\na.jpg,"A dog, wet, runs ."\r\n\r\na.jpg,A dog .\r\n   \r\n,\r\nb.jpg,"He said ""hi"""\r\n'
    (tmp_path / "captions.txt").write_bytes(text.encode("utf-8"))
    table = read_caption_csv(tmp_path / "captions.txt")
    assert table.captions == {"a.jpg": ["A dog, wet, runs .", "A dog ."], "b.jpg": ['He said "hi"']}


@pytest.mark.parametrize("text, expected", [
    ("a.jpg,A dog .\n", "captions.txt:1: expected the header 'image,caption'"),
    ("", "captions.txt:1: expected the header 'image,caption'"),
    ("image,caption\na.jpg,A dog .\nb.jpg\n", "captions.txt:3: expected 2 fields"),
    ("image,caption\na.jpg,\n", "captions.txt:2: expected a non-empty image and caption"),
])
def test_kaggle_csv_errors_name_file_and_line(tmp_path, text, expected):
    (tmp_path / "captions.txt").write_text(text)
    with pytest.raises(DatasetFormatError) as error:
        read_flickr8k(tmp_path / "captions.txt", tmp_path, log=quiet)
    assert expected in str(error.value)


def test_token_file_skips_bogus_entry_and_orders_by_number(tmp_path):
    lines = ["a.jpg#1\tsecond caption", "a.jpg#0\tfirst caption", "2258277193_586949ec62.jpg.1#0\tbogus",
             "", "b.jpg#0\tonly caption"]
    (tmp_path / "Flickr8k.token.txt").write_text("\r\n".join(lines) + "\r\n")
    write_flickr8k_lists(tmp_path, ["a.jpg"], ["b.jpg"])
    messages = []
    splits = read_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path / "Images", log=messages.append)
    assert messages == []  # the bogus image is skipped, not reported as outside the lists
    assert [(r.image_id, r.captions) for r in splits["train"]] == [("a.jpg", ("first caption", "second caption"))]
    assert [r.image_id for r in splits["val"]] == ["b.jpg"] and splits["test"] == []
    assert splits["train"][0].path == str(tmp_path / "Images" / "a.jpg")


@pytest.mark.parametrize("bad_line", ["a.jpg#1 no tab here", "a.jpg\tno number", "a.jpg#x\tbad number",
                                      "a.jpg#2\t   "])
def test_token_file_malformed_line_names_file_and_line(tmp_path, bad_line):
    (tmp_path / "Flickr8k.token.txt").write_text(f"a.jpg#0\tfine\n\n{bad_line}\n")
    with pytest.raises(DatasetFormatError, match=r"Flickr8k\.token\.txt:3: expected 'image\.jpg#N<TAB>caption'"):
        read_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path, log=quiet)


def test_token_file_with_a_malformed_first_line_is_not_mistaken_for_a_csv(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg 0 caption\n")
    with pytest.raises(DatasetFormatError, match=r"Flickr8k\.token\.txt:1: expected 'image\.jpg#N<TAB>caption'"):
        read_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path, log=quiet)


def test_token_file_duplicate_caption_number_is_an_error(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tone\na.jpg#0\ttwo\n")
    with pytest.raises(DatasetFormatError, match=r"Flickr8k\.token\.txt:2: caption a\.jpg#0 appears twice"):
        read_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path, log=quiet)


def test_flickr8k_both_formats_give_the_same_dataset(tmp_path):
    names = [f"{index}.jpg" for index in range(6)]
    (tmp_path / "captions.txt").write_text("image,caption\n" + "".join(
        f'{name},"cap {n}, of {name}"\n' for name in names for n in range(2)))
    (tmp_path / "Flickr8k.token.txt").write_text("".join(
        f"{name}#{n}\tcap {n}, of {name}\n" for name in names for n in range(2)))
    write_flickr8k_lists(tmp_path, names[:4], names[4:])
    messages = []
    from_csv = read_flickr8k(tmp_path / "captions.txt", tmp_path, log=messages.append)
    from_tokens = read_flickr8k(tmp_path / "Flickr8k.token.txt", tmp_path, log=messages.append)
    assert from_csv == from_tokens
    assert [len(from_csv[split]) for split in ("train", "val", "test")] == [4, 2, 0]
    assert messages == []


def test_flickr8k_without_lists_uses_a_seeded_random_split(tmp_path):
    names = [f"{index:02d}.jpg" for index in range(20)]
    (tmp_path / "captions.txt").write_text("image,caption\n" + "".join(f"{name},a cap\n" for name in names))
    first = read_flickr8k(tmp_path / "captions.txt", tmp_path, split_seed=3, val_fraction=0.2, test_fraction=0.1)
    again = read_flickr8k(tmp_path / "captions.txt", tmp_path, split_seed=3, val_fraction=0.2, test_fraction=0.1)
    other = read_flickr8k(tmp_path / "captions.txt", tmp_path, split_seed=4, val_fraction=0.2, test_fraction=0.1)
    assert first == again != other
    assert [len(first[split]) for split in ("train", "val", "test")] == [14, 4, 2]


def test_flickr8k_images_outside_the_lists_are_left_out_with_a_message(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,one\nb.jpg,two\nc.jpg,three\n")
    write_flickr8k_lists(tmp_path, ["a.jpg"], ["b.jpg"])
    messages = []
    splits = read_flickr8k(tmp_path / "captions.txt", tmp_path, log=messages.append)
    assert sum(len(records) for records in splits.values()) == 2
    assert messages == ["flickr8k: 1 captioned images are in none of the split lists; left out"]


# ---------------------------------------------------------------- COCO

def coco_file(images: list[tuple[int, str]], annotations: list[tuple[int, str]]) -> dict:
    return {"images": [{"id": image_id, "file_name": name} for image_id, name in images],
            "annotations": [{"image_id": image_id, "caption": caption} for image_id, caption in annotations]}


def write_coco(root: Path, num_val: int = 10) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    train = coco_file([(1, "t1.jpg"), (2, "t2.jpg"), (3, "t3.jpg")], [(1, "one "), (1, "uno"), (2, "two")])
    val_images = [(100 + index, f"v{index}.jpg") for index in range(num_val)]
    val = coco_file(val_images, [(image_id, f"val {image_id}") for image_id, _ in val_images])
    write_json(root / "annotations" / "captions_train2014.json", train)
    write_json(root / "annotations" / "captions_val2014.json", val)


def test_coco_train_and_seeded_val_test_split(tmp_path):
    write_coco(tmp_path)
    messages = []
    splits = read_coco(tmp_path / "annotations", tmp_path, split_seed=0, log=messages.append)
    assert [(r.image_id, r.captions) for r in splits["train"]] == [("1", ("one", "uno")), ("2", ("two",))]
    assert splits["train"][0].path == str(tmp_path / "train2014" / "t1.jpg")
    assert len(splits["val"]) == len(splits["test"]) == 5  # val2014 halved with equal fractions
    assert splits["val"][0].path.startswith(str(tmp_path / "val2014"))
    assert messages == ["coco: 1 images in captions_train2014.json have no caption; left out"]
    assert read_coco(tmp_path / "annotations", tmp_path, split_seed=0, log=quiet) == splits
    assert read_coco(tmp_path / "annotations", tmp_path, split_seed=1, log=quiet) != splits


@pytest.mark.parametrize("data, expected", [
    ({"images": []}, "captions_val2014.json: expected an object with an 'annotations' list"),
    (coco_file([(1, "a.jpg")], [(1, "ok"), (9, "who")]), "captions_val2014.json: annotations[1].image_id: 9 is not in"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]},
     "captions_val2014.json: annotations[0].caption: expected str, got None"),
    ({"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []},
     "captions_val2014.json: images[0].id: expected int, got '1'"),
    (coco_file([(1, "a.jpg"), (1, "b.jpg")], []), "captions_val2014.json: images[1].id: duplicate id 1"),
])
def test_coco_malformed_input_names_file_and_json_path(tmp_path, data, expected):
    write_coco(tmp_path)
    write_json(tmp_path / "annotations" / "captions_val2014.json", data)
    with pytest.raises(DatasetFormatError) as error:
        read_coco(tmp_path / "annotations", tmp_path, log=quiet)
    assert expected in str(error.value)


def test_coco_missing_annotation_file(tmp_path):
    write_coco(tmp_path)
    (tmp_path / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(DatasetFormatError, match="captions_val2014.json: COCO annotation file not found"):
        read_coco(tmp_path / "annotations", tmp_path, log=quiet)


# ---------------------------------------------------------------- folder + CSV

def test_folder_with_split_column(tmp_path):
    (tmp_path / "captions.csv").write_text(
        "Image, Caption ,split\ncats/a.png,two cats,train\ncats/a.png,\"cats, two\",train\nb.png,a dog,TEST\n")
    splits = read_folder(tmp_path / "captions.csv", tmp_path / "images")
    assert [(r.image_id, r.captions, r.path) for r in splits["train"]] == [
        ("cats/a.png", ("two cats", "cats, two"), str(tmp_path / "images" / "cats" / "a.png"))]
    assert [r.image_id for r in splits["test"]] == ["b.png"] and splits["val"] == []


@pytest.mark.parametrize("text, expected", [
    ("image,caption,split\na.png,x,dev\n", "captions.csv:2: split: expected one of train, val, test, got 'dev'"),
    ("image,caption,split\na.png,x,train\na.png,y,val\n", "captions.csv:3: image 'a.png' is in split 'val' here"),
    ("image,caption,kind\na.png,x,y\n", "captions.csv:1: expected the header 'image,caption'"),
    ("image,caption\n\n", "captions.csv: expected at least one 'image,caption' row"),
])
def test_folder_errors_name_file_and_line(tmp_path, text, expected):
    (tmp_path / "captions.csv").write_text(text)
    with pytest.raises(DatasetFormatError) as error:
        read_folder(tmp_path / "captions.csv", tmp_path)
    assert expected in str(error.value)


def test_random_split_is_seeded_sized_and_independent_of_order():
    ids = [f"{index}.jpg" for index in range(100)]
    split_of = random_split(ids, seed=5, val_fraction=0.1, test_fraction=0.2)
    assert random_split(list(reversed(ids)), seed=5, val_fraction=0.1, test_fraction=0.2) == split_of
    assert random_split(ids, seed=6, val_fraction=0.1, test_fraction=0.2) != split_of
    assert [list(split_of.values()).count(split) for split in ("train", "val", "test")] == [70, 10, 20]
    assert set(random_split(ids[:5], 0, 0.05, 0.0).values()) == {"train", "val"}  # a small share still gets one
    with pytest.raises(ConfigError, match="data.val_fraction=0.6, data.test_fraction=0.5"):
        random_split(ids, seed=0, val_fraction=0.6, test_fraction=0.5)


# ---------------------------------------------------------------- image check

def folder_with_images(root: Path, num_images: int, num_missing: int, num_broken: int = 0) -> None:
    rows = []
    for index in range(num_images):
        path = root / "images" / f"{index:03d}.png"
        if index >= num_missing + num_broken:
            write_image(path)
        elif index >= num_missing:
            path.write_text("not an image")
        rows.append(f"{path.name},caption {index},train\n")
    (root / "captions.csv").write_text("image,caption,split\n" + "".join(rows))


@pytest.mark.parametrize("min_images_for_threads", [10_000, 0])  # checked in one thread, on the pool
def test_few_bad_images_are_skipped_with_one_warning(tmp_path, monkeypatch, min_images_for_threads):
    monkeypatch.setattr("captioner.data.validate.MIN_IMAGES_FOR_THREADS", min_images_for_threads)
    (tmp_path / "images").mkdir()
    folder_with_images(tmp_path, num_images=40, num_missing=1, num_broken=1)
    splits = read_folder(tmp_path / "captions.csv", tmp_path / "images")
    messages = []
    kept = validate_images(splits, max_bad_fraction=0.05, log=messages.append)
    assert len(kept["train"]) == 38 and "000.png" not in {r.image_id for r in kept["train"]}
    assert len(messages) == 1
    assert "2 of 40 images (5.0%)" in messages[0] and f"{tmp_path / 'images' / '000.png'} (missing)" in messages[0]
    assert f"{tmp_path / 'images' / '001.png'} (not a supported image (expected JPEG" in messages[0]


def test_too_many_bad_images_abort_with_count_and_examples(tmp_path):
    (tmp_path / "images").mkdir()
    folder_with_images(tmp_path, num_images=20, num_missing=8)
    splits = read_folder(tmp_path / "captions.csv", tmp_path / "images")
    with pytest.raises(DatasetFormatError, match=r"8 of 20 images \(40.0%\).*000.png \(missing\).*and 3 more"):
        validate_images(splits, max_bad_fraction=0.1, log=quiet)


def test_load_dataset_validates_and_prints_counts(tmp_path):
    (tmp_path / "images").mkdir()
    folder_with_images(tmp_path, num_images=30, num_missing=0)
    messages = []
    splits = load_dataset(DataConfig(format="folder", root=str(tmp_path)), log=messages.append)
    assert [len(splits[split]) for split in ("train", "val", "test")] == [30, 0, 0]
    assert messages[-1].endswith("train 30 images / 30 captions, val 0 images / 0 captions, test 0 images / 0 captions")


# ---------------------------------------------------------------- dispatch and auto-detection

def make_dataset(root: Path, format_name: str) -> None:
    """A small dataset of each format with real images."""
    if format_name == "karpathy":
        write_image(root / "Images" / "a.jpg")
        write_json(root / "dataset_flickr8k.json", {"images": [karpathy_entry("a.jpg")]})
    elif format_name == "coco":
        write_coco(root, num_val=2)
        for name in ("t1.jpg", "t2.jpg"):
            write_image(root / "train2014" / name)
        for index in range(2):
            write_image(root / "val2014" / f"v{index}.jpg")
    elif format_name == "flickr8k":
        for index in range(10):
            write_image(root / "Flicker8k_Dataset" / f"{index}.jpg")
        (root / "Flickr8k.token.txt").write_text("".join(f"{index}.jpg#0\tcap {index}\n" for index in range(10)))
    else:
        (root / "images").mkdir()
        folder_with_images(root, num_images=3, num_missing=0)


@pytest.mark.parametrize("format_name, num_images", [("karpathy", 1), ("coco", 4), ("flickr8k", 10), ("folder", 3)])
def test_auto_detects_each_format(tmp_path, format_name, num_images):
    make_dataset(tmp_path, format_name)
    assert detect_format(tmp_path) == format_name
    messages = []
    splits = load_dataset(DataConfig(format="auto", root=str(tmp_path)), log=messages.append)
    assert sum(len(records) for records in splits.values()) == num_images
    assert messages[0] == f"data.format=auto: found a {format_name} dataset in {tmp_path.resolve()}"
    assert all(Path(record.path).is_file() for records in splits.values() for record in records)


def test_auto_detection_failure_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetFormatError) as error:
        load_dataset(DataConfig(format="auto", root=str(tmp_path)), log=quiet)
    for looked_for in ("dataset_*.json", "annotations/captions_train2014.json", "captions.txt",
                       "Flickr8k.token.txt", "captions.csv", "data.format"):
        assert looked_for in str(error.value)


def test_load_dataset_refuses_unknown_format_missing_root_and_missing_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="data.root: folder .*nowhere does not exist"):
        load_dataset(DataConfig(format="folder", root=str(tmp_path / "nowhere")), log=quiet)
    with pytest.raises(DatasetFormatError, match="data.captions_file: no file mine.csv in"):
        load_dataset(DataConfig(format="folder", root=str(tmp_path), captions_file="mine.csv"), log=quiet)
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,x\n")
    with pytest.raises(DatasetFormatError, match="data.images_dir: no folder Images or Flicker8k_Dataset in"):
        load_dataset(DataConfig(format="flickr8k", root=str(tmp_path)), log=quiet)


def test_shapes_format_reads_the_generated_json_as_karpathy(tmp_path, monkeypatch):
    calls = []

    def fake_ensure_shapes_dataset(root: Path, synthetic) -> Path:
        calls.append((root, synthetic.seed))
        write_image(root / "images" / "00000.jpg")
        entry = karpathy_entry("00000.jpg", "val", filepath="images", scene={"background": "white"})
        return write_json(root / "dataset_shapes.json", {"dataset": "shapes", "images": [entry]})

    fake = types.ModuleType("captioner.data.shapes")
    fake.ensure_shapes_dataset = fake_ensure_shapes_dataset
    monkeypatch.setitem(sys.modules, "captioner.data.shapes", fake)
    splits = load_dataset(DataConfig(format="shapes", root=str(tmp_path / "shapes")), log=quiet)
    assert calls == [((tmp_path / "shapes").resolve(), 0)]
    assert splits["val"][0].scene == {"background": "white"}
    assert splits["val"][0].path == str((tmp_path / "shapes" / "images" / "00000.jpg").resolve())


# ---------------------------------------------------------------- the real Flickr8k sample

def test_shared_flickr8k_sample_parses_the_same_in_both_formats():
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} not present")
    from_csv = load_dataset(DataConfig(format="flickr8k", root=str(SAMPLE)), log=quiet)
    from_tokens = load_dataset(DataConfig(format="flickr8k", root=str(SAMPLE), captions_file="Flickr8k.token.txt"),
                               log=quiet)
    assert from_csv == from_tokens
    assert [len(from_csv[split]) for split in ("train", "val", "test")] == [753, 113, 0]
    assert all(len(record.captions) == 5 for records in from_csv.values() for record in records)
    assert any("," in caption for record in from_csv["train"] for caption in record.captions)  # quoted commas
