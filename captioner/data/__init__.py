"""Datasets behind one call: `load_dataset(config.data)` -> {"train": [...], "val": [...], "test": [...]}.

    format     files looked for in data.root (data.captions_file / data.images_dir override them)
    shapes     dataset_shapes.json + images/, generated on first use (shapes.py), read as Karpathy JSON
    karpathy   dataset_coco.json | dataset_flickr30k.json | dataset_flickr8k.json | dataset_*.json
    flickr8k   captions.txt (Kaggle) | Flickr8k.token.txt, images in Images/ | Flicker8k_Dataset/
    coco       annotations/captions_{train,val}2014.json, images in train2014/ and val2014/
               (data.captions_file names the annotations folder, data.images_dir the folder above train2014/)
    folder     captions.csv (image,caption[,split]), images in images/ | Images/ | the root itself
    auto       the first of karpathy, coco, flickr8k, folder whose files are in data.root

Every reader returns ImageRecords per split (a missing split is an empty list); text.py reads the files
so that every error names the file and line, paths.py keeps the written image paths inside the dataset.
No file may appear twice (paths.check_distinct_files), the images are checked (validate.py), and the
counts per split printed. batches.py turns records into training
batches; feature_cache.py stores a frozen encoder's features on disk.

May import: captioner.config, captioner.files, captioner.images, captioner.modes, captioner.vocab,
captioner.encoders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from captioner.config import DataConfig
from captioner.data import coco, flickr8k, folder, karpathy
from captioner.data.paths import check_distinct_files
from captioner.data.records import SPLITS, DatasetFormatError, ImageRecord
from captioner.data.validate import validate_images

KARPATHY_FILES = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
KARPATHY_IMAGE_DIRS = ("Images", "images", "Flicker8k_Dataset", "flickr30k-images", "flickr30k_images")
COCO_TRAIN_FILE = f"{coco.ANNOTATIONS_DIR}/{coco.SUBSETS[0][0]}"
FLICKR8K_FILES = (flickr8k.CSV_NAME, flickr8k.TOKEN_NAME)
FOLDER_FILE = "captions.csv"
FOLDER_IMAGE_DIRS = ("images", "Images")

Log = Callable[[str], None]
Splits = dict[str, list[ImageRecord]]


def load_dataset(config: DataConfig, log: Log = print) -> Splits:
    """Read the dataset that `config` names, drop bad images (validate.py) and print the split sizes."""
    root = Path(config.root).expanduser().resolve()
    if config.format == "shapes":
        from captioner.data.shapes import ensure_shapes_dataset  # imported here: only this format needs it

        json_path = ensure_shapes_dataset(root, config.synthetic)
        splits, name = karpathy.read_karpathy(json_path, json_path.parent, use_restval=True), "shapes"
    else:
        if not root.is_dir():
            raise DatasetFormatError(f"data.root: folder {root} does not exist")
        name = detect_format(root) if config.format == "auto" else config.format
        if config.format == "auto":
            log(f"data.format=auto: found a {name} dataset in {root}")
        splits = _READERS[name](root, config, log)
    if not any(splits.values()):
        raise DatasetFormatError(f"{root}: the {name} dataset has no captioned images")
    check_distinct_files(splits, root)  # one photo in two splits would leak test images into training
    splits = validate_images(splits, config.max_bad_images, log)
    counts = ", ".join(f"{split} {len(splits[split])} images / "
                       f"{sum(len(record.captions) for record in splits[split])} captions" for split in SPLITS)
    log(f"data: {name} at {root}: {counts}")
    return splits


def detect_format(root: Path) -> str:
    """The format whose usual files are in `root`; an error lists what was looked for."""
    if any((root / name).is_file() for name in KARPATHY_FILES) or any(root.glob("dataset_*.json")):
        return "karpathy"
    if (root / COCO_TRAIN_FILE).is_file():
        return "coco"
    if any((root / name).is_file() for name in FLICKR8K_FILES):
        return "flickr8k"
    if (root / FOLDER_FILE).is_file():
        return "folder"
    raise DatasetFormatError(
        f"{root}: cannot tell the dataset format (data.format=auto); looked for dataset_*.json (karpathy), "
        f"{COCO_TRAIN_FILE} (coco), {' or '.join(FLICKR8K_FILES)} (flickr8k), {FOLDER_FILE} (folder); "
        "set data.format (and data.captions_file) to read other files")


def _find(root: Path, configured: str, candidates: tuple[str, ...], key: str, kind: str = "file") -> Path:
    """root/configured when set (it must exist), else the first candidate that exists."""
    names = (configured,) if configured else candidates
    for name in names:
        path = root / name
        if path.is_file() if kind == "file" else path.is_dir():
            return path
    raise DatasetFormatError(f"data.{key}: no {kind} {' or '.join(names)} in {root}")


def _read_karpathy(root: Path, config: DataConfig, log: Log) -> Splits:
    matches = sorted(path.name for path in root.glob("dataset_*.json"))
    candidates = tuple(name for name in KARPATHY_FILES if name in matches) or tuple(matches) or KARPATHY_FILES
    if not config.captions_file and len(candidates) > 1:
        raise DatasetFormatError(f"{root}: several Karpathy files ({', '.join(candidates)}); set data.captions_file")
    json_path = _find(root, config.captions_file, candidates, "captions_file")
    image_dirs = (config.images_dir,) if config.images_dir else ("",) + KARPATHY_IMAGE_DIRS
    return karpathy.read_karpathy(json_path, [root / name for name in image_dirs], config.use_restval)


def _read_flickr8k(root: Path, config: DataConfig, log: Log) -> Splits:
    captions_path = _find(root, config.captions_file, FLICKR8K_FILES, "captions_file")
    images_root = _find(root, config.images_dir, flickr8k.IMAGE_DIRS, "images_dir", kind="folder")
    return flickr8k.read_flickr8k(captions_path, images_root, root, config.split_seed, config.val_fraction,
                                  config.test_fraction, log)


def _read_coco(root: Path, config: DataConfig, log: Log) -> Splits:
    annotations = _find(root, config.captions_file, (coco.ANNOTATIONS_DIR,), "captions_file", kind="folder")
    images_root = root / config.images_dir
    return coco.read_coco(annotations, images_root, config.split_seed, config.val_fraction,
                          config.test_fraction, log)


def _read_folder(root: Path, config: DataConfig, log: Log) -> Splits:
    csv_path = _find(root, config.captions_file, (FOLDER_FILE,), "captions_file")
    image_dirs = [name for name in FOLDER_IMAGE_DIRS if (root / name).is_dir()]
    images_root = root / (config.images_dir or (image_dirs[0] if image_dirs else ""))
    return folder.read_folder(csv_path, images_root, config.split_seed, config.val_fraction, config.test_fraction)


_READERS: dict[str, Callable[[Path, DataConfig, Log], Splits]] = {
    "karpathy": _read_karpathy, "flickr8k": _read_flickr8k, "coco": _read_coco, "folder": _read_folder}
