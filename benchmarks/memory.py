"""Peak memory (RSS) of loading a large dataset: load_dataset -> Vocabulary.build -> CaptionedImages.

    python benchmarks/memory.py                        # 20,000 images x 5 captions = 100,000 captions
    python benchmarks/memory.py --images 113287        # COCO's Karpathy train split, 566k captions

The benchmark writes a synthetic Karpathy JSON (dataset_coco.json) into a temporary folder: COCO-like
captions of 8-16 words drawn from a 5,000-word Zipf vocabulary, and one tiny JPEG hard-linked under every
image name (validate.py decodes each one, so every file must exist; a tiny JPEG decodes fast). The loading is
then measured in a fresh child process, so neither the generator nor an earlier run counts: RSS after the
imports (torch included), after each stage, and the peak (VmHWM) at the end. CaptionedImages is built with
no pixel bank (bank=None), as training does above BANK_BUDGET_BYTES: images then stream from disk.
Prints a Markdown table and writes the numbers as JSON (--output).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCABULARY_SIZE = 5000  # distinct words in the synthetic captions (COCO train: ~25k, ~10k above 5 uses)
LINKS_PER_FILE = 50_000  # hard links per template JPEG (ext4 allows 65,000)


def write_dataset(root: Path, num_images: int, captions_per_image: int, seed: int = 0) -> Path:
    """dataset_coco.json + images/ under root; 5k val and 5k test images at most, like Karpathy's split."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = [f"w{index}" for index in range(VOCABULARY_SIZE)]
    weights = [1.0 / (rank + 1) for rank in range(VOCABULARY_SIZE)]  # Zipf's law, as in real captions
    held_out = min(5000, num_images // 10)
    entries = []
    for index in range(num_images):
        name = f"{index:06d}.jpg"
        template = images / f"template-{index // LINKS_PER_FILE}.jpg"
        if index % LINKS_PER_FILE == 0:
            Image.new("RGB", (8, 8), (120, 80, 40)).save(template, format="JPEG")
        os.link(template, images / name)
        split = "val" if index < held_out else "test" if index < 2 * held_out else "train"
        sentences = [{"raw": "a " + " ".join(rng.choices(words, weights, k=rng.randint(8, 16))) + "."}
                     for _ in range(captions_per_image)]
        entries.append({"filepath": "images", "filename": name, "cocoid": index, "split": split,
                        "sentences": sentences})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc/self/status (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(root: Path) -> dict:
    """Run in the child process: load the dataset the way Trainer does and record RSS after each stage."""
    sys.path.insert(0, str(REPO))
    import torch  # noqa: F401  (counted in the baseline, as in a training run)

    from captioner.config import load_config
    from captioner.data import load_dataset
    from captioner.data.batches import CaptionedImages
    from captioner.vocab import Vocabulary

    stages = {"imports (torch, captioner)": rss_mb()[0]}
    started = time.perf_counter()
    config = load_config(None, [f"data.root={root}", "data.format=karpathy"])
    splits = load_dataset(config.data, log=lambda message: None)
    stages["load_dataset (records of all splits)"] = rss_mb()[0]
    vocab = Vocabulary.build((text for record in splits["train"] for text in record.captions),
                             config.data.min_word_count)
    stages["+ Vocabulary.build"] = rss_mb()[0]
    dataset = CaptionedImages(splits["train"], vocab, lambda image: image, config.data.max_caption_length,
                              config.train.captions_per_image, config.train.seed, bank=None)
    stages["+ CaptionedImages (encoded captions)"] = rss_mb()[0]
    captions = sum(len(record.captions) for records in splits.values() for record in records)
    return {"images": sum(len(records) for records in splits.values()), "captions": captions,
            "train_images": len(dataset), "vocabulary": len(vocab), "seconds": round(time.perf_counter() - started, 1),
            "rss_mb": {name: round(value, 1) for name, value in stages.items()}, "peak_rss_mb": round(rss_mb()[1], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="images in the synthetic dataset")
    parser.add_argument("--captions-per-image", type=int, default=5, help="reference captions per image")
    parser.add_argument("--output", default=None, help="write the numbers to this JSON file")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0
    with tempfile.TemporaryDirectory(prefix="captioner-memory-") as directory:
        write_dataset(Path(directory), args.images, args.captions_per_image)
        child = subprocess.run([sys.executable, __file__, "--measure", directory], capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            return 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    baseline = next(iter(result["rss_mb"].values()))
    print(f"{result['images']:,} images, {result['captions']:,} captions, vocabulary {result['vocabulary']:,} words, "
          f"loaded in {result['seconds']} s\n")
    print("| stage | RSS (MB) | above imports (MB) |\n|---|---:|---:|")
    for name, value in result["rss_mb"].items():
        print(f"| {name} | {value:.0f} | {value - baseline:.0f} |")
    print(f"| peak (VmHWM) | {result['peak_rss_mb']:.0f} | {result['peak_rss_mb'] - baseline:.0f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
