"""Train the image–sentence scorer (captioner/scorer/model.py) on a frozen encoder's features, then measure it:
retrieval R@1/5/10 both ways next to chance, and BLEU-1..4 of the captioner's beam with and without reranking.

    python train.py --config configs/scorer.yaml                  # train.py hands `task: scorer` configs here
    python -m captioner.scorer.training --config configs/scorer.yaml scorer.captioner_checkpoint=runs/shapes/best.pt

The scorer reads the features of the captioner it will rerank for: its encoder (frozen, eval mode) and its
vocabulary come from `scorer.captioner_checkpoint`, so reranking compares exactly the features `generate()` has.
Every image is encoded once; an epoch visits each training image once, with one of its captions drawn at random.
Writes <run_dir>/scorer.pt (the epoch with the best validation R@1+R@5+R@10 sum; the last epoch when the
validation split is also the one reported, as on the Flickr8k sample), scorer_metrics.json and config.yaml.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import yaml

from captioner.checkpoint import CheckpointError, save_checkpoint
from captioner.config import Cell, ConfigError, DataConfig, ImageFit, load_dataclass, read_yaml
from captioner.data import load_dataset
from captioner.data.batches import preprocess_file
from captioner.data.feature_cache import FeatureCache, feature_cache_directory
from captioner.data.records import DatasetFormatError, ImageRecord
from captioner.devices import resolve_device
from captioner.encoders.backbones import Encoder, EncoderError, build_encoder
from captioner.files import write_atomically
from captioner.metrics.bleu import bleu_scores
from captioner.metrics.retrieval import recall_at_k
from captioner.model import Captioner, load_checkpoint
from captioner.modes import evaluating
from captioner.scorer.model import (
    ImageSentenceScorer,
    ScorerSettings,
    ranking_loss,
    scorer_payload,
)
from captioner.scorer.rerank import rerank_generations
from captioner.training.randomness import seed_everything
from captioner.training.run_dir import prepare_run_dir
from captioner.vocab import Vocabulary, tokenize

DEFAULT_CONFIG = "configs/scorer.yaml"
RERANK_SWEEP = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # weights tried on the validation split when tuning


@dataclass
class ScorerModelConfig:
    captioner_checkpoint: str = "runs/shapes/best.pt"  # its frozen encoder + vocabulary; "" = backbone below
    backbone: str = "small_cnn"  # encoder when captioner_checkpoint is "" (no reranking then)
    pretrained: bool = False  # ImageNet weights for that backbone
    image_fit: ImageFit = "crop"  # that backbone's input: crop (centre) | stretch (whole photo)
    image_size: int = 0  # side of that backbone's input in pixels; 0 = the size it was trained at
    embed_size: int = 128  # word embedding size E
    hidden_size: int = 128  # state size H of each direction
    num_layers: int = 1  # bidirectional layers
    cell: Cell = "lstm"  # the recurrence of each direction (captioner/rnn/cells.py)
    joint_size: int = 256  # size J of the shared image–sentence space
    pooling: Literal["mean", "final"] = "mean"  # mean: mean_t [h→_t ; h←_t] | final: [h→_T ; h←_1]
    dropout: float = 0.0  # on word embeddings and between layers


@dataclass
class ScorerTrainConfig:
    epochs: int = 10  # passes over the training images, one caption each
    batch_size: int = 128  # images per step; the negatives come from the same batch
    learning_rate: float = 2e-3  # Adam
    margin: float = 0.2  # m in the hinge [m − S_kk + S_kl]_+
    hardest_negatives: bool = True  # VSE++ (max over the batch); false = sum over all negatives
    warmup_epochs: int = 1  # first epochs sum over all negatives: hardest-only from a random start collapses
    grad_clip: float = 2.0  # clip the global gradient norm (0 = off)
    seed: int = 0  # initial weights, batch order and caption choice
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass
class ScorerEvalConfig:
    split: Literal["train", "val", "test"] = "test"  # where retrieval and rerank BLEU are measured; an empty split falls back to val
    beam_size: int = 5  # the captioner's beam whose alternatives are reranked
    max_length: int = 20  # longest generated caption, in words
    rerank_weight: float = 1.0  # w in log p + w · score, when not tuned
    tune_rerank_weight: bool = True  # pick w from RERANK_SWEEP by BLEU-4 on val (only if val != the eval split)
    batch_size: int = 100  # images per generation batch


@dataclass
class ScorerConfig:
    task: str = "scorer"  # selects this trainer in train.py
    run_dir: str = "runs/scorer"  # scorer.pt, scorer_metrics.json and config.yaml go here
    data: DataConfig = field(default_factory=DataConfig)
    scorer: ScorerModelConfig = field(default_factory=ScorerModelConfig)
    train: ScorerTrainConfig = field(default_factory=ScorerTrainConfig)
    eval: ScorerEvalConfig = field(default_factory=ScorerEvalConfig)


def load_scorer_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ScorerConfig:
    """Defaults, then the YAML file, then dotted overrides: `config.load_dataclass`, as for the captioner."""
    config = load_dataclass(ScorerConfig, path, overrides)
    if config.task != "scorer":
        raise ConfigError(f"task: expected 'scorer' in a scorer config, got {config.task!r}")
    return config


def is_scorer_config(path: str | Path) -> bool:
    """Whether a YAML config selects this trainer (`task: scorer` at its top level); train.py asks."""
    try:
        values = read_yaml(path)
    except ConfigError:
        return False  # not readable: load_config reports why
    return values.get("task") == "scorer"


@torch.no_grad()
def image_features(encoder: Encoder, records: Sequence[ImageRecord], data: DataConfig, device: torch.device,
                   log: Callable = print, batch_size: int = 64) -> torch.Tensor:
    """f_I of every image through the frozen encoder (eval mode), (N, F) or per region (N, R, F), on the CPU.
    With data.feature_cache on they come from the feature cache (captioner/data/feature_cache.py), which the
    captioner's own training with a frozen encoder has usually filled already."""
    encoder.eval()
    if data.feature_cache:
        directory = feature_cache_directory(data)
        return FeatureCache(directory, encoder, data.feature_dtype, batch_size, log=log).features(records)[:]
    chunks = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        pixels = torch.stack([preprocess_file(record, encoder.preprocess) for record in chunk])  # (b, 3, S, S)
        chunks.append(encoder(pixels.to(device)).float().cpu())  # (b, F) or (b, R, F)
    return torch.cat(chunks)


def caption_ids(records: Sequence[ImageRecord], vocab: Vocabulary, max_length: int) -> list[list[list[int]]]:
    """Each image's captions as <start> ids <end>, cut to max_length words."""
    return [[vocab.encode(text, max_length=max_length) for text in record.captions] for record in records]


def train_epoch(scorer: ImageSentenceScorer, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                captions: list[list[list[int]]], config: ScorerTrainConfig, chooser: random.Random,
                hardest: bool = True) -> float:
    """One pass over the images in a random order, one random caption each; returns the mean loss.
    hardest: the hardest negative per row and column (VSE++), else the sum over all negatives."""
    device = next(scorer.parameters()).device
    order = list(range(len(captions)))
    chooser.shuffle(order)
    scorer.train()
    losses = []
    for start in range(0, len(order) - 1, config.batch_size):
        batch = order[start:start + config.batch_size]
        if len(batch) < 2:
            break  # a lone image has no negatives
        sentences = [chooser.choice(captions[index]) for index in batch]
        keys = [tuple(sentence) for sentence in sentences]
        same_caption = torch.tensor([[a == b for b in keys] for a in keys], device=device)  # (B, B)
        similarity = scorer(features[batch].to(device), sentences)  # (B, B)
        loss = ranking_loss(similarity, config.margin, hardest, also_positive=same_caption)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def retrieval_metrics(scorer: ImageSentenceScorer, features: torch.Tensor,
                      captions: list[list[list[int]]]) -> dict[str, float]:
    """R@1/5/10 image→text and text→image over every caption of a split, with their chance values."""
    scorer.eval()
    sentences = [sentence for image_captions in captions for sentence in image_captions]
    sentence_image = torch.tensor([index for index, image_captions in enumerate(captions) for _ in image_captions])
    similarity = scorer(features.to(next(scorer.parameters()).device), sentences).cpu()  # (N, M)
    metrics = recall_at_k(similarity, sentence_image)
    metrics["rsum"] = sum(metrics[f"{way}_r{k}"] for way in ("i2t", "t2i") for k in (1, 5, 10))
    return {"num_images": len(captions), "num_sentences": len(sentences), **metrics}


@torch.no_grad()
def rerank_bleu(captioner: Captioner, scorer: ImageSentenceScorer, features: torch.Tensor,
                records: Sequence[ImageRecord], config: ScorerEvalConfig, weights: Sequence[float]) -> dict[str, Any]:
    """BLEU-1..4 of the top caption: the beam's own order, the beam reranked at weights[0], and
    (under "sweep") BLEU-4 of reranking the same beams at every weight in `weights`."""
    with evaluating(captioner):
        return _rerank_bleu(captioner, scorer, features, records, config, weights)


def _rerank_bleu(captioner: Captioner, scorer: ImageSentenceScorer, features: torch.Tensor,
                 records: Sequence[ImageRecord], config: ScorerEvalConfig, weights: Sequence[float]) -> dict[str, Any]:
    references = [[tokenize(text) for text in record.captions] for record in records]
    plain, reranked, sweep_tops = [], [], {weight: [] for weight in weights}
    device = next(captioner.parameters()).device
    decoding = replace(captioner.decoding, beam_size=config.beam_size, max_length=config.max_length)  # its own rules
    for start in range(0, len(records), config.batch_size):
        chunk = features[start:start + config.batch_size].to(device)
        beams = captioner.generate(features=chunk, decoding=decoding)
        chosen = rerank_generations(beams, chunk, scorer, weights[0], decoding.length_penalty)
        plain += [generation.words[0] for generation in beams]
        reranked += [generation.words[0] for generation in chosen]
        for weight in weights:
            sweep_tops[weight] += [g.words[0] for g in rerank_generations(beams, chunk, scorer, weight,
                                                                          decoding.length_penalty)]
    return {"weight": weights[0], "beam": bleu_scores(plain, references), "reranked": bleu_scores(reranked, references),
            "changed_top_caption": sum(a != b for a, b in zip(plain, reranked)),
            "sweep_bleu4": {str(weight): bleu_scores(tops, references)["bleu4"] for weight, tops in sweep_tops.items()}}


def build_parts(config: ScorerConfig, splits: dict[str, list[ImageRecord]], device: torch.device,
                log: Callable) -> tuple[Captioner | None, Encoder, Vocabulary]:
    """-> (captioner or None, encoder, vocabulary) from the captioner checkpoint, or a backbone by name."""
    model = config.scorer
    if model.captioner_checkpoint:
        captioner = load_checkpoint(model.captioner_checkpoint, device=device)
        log(f"scorer: features and vocabulary of the captioner {model.captioner_checkpoint} "
            f"({captioner.encoder.name}, {len(captioner.vocab)} words)")
        return captioner, captioner.encoder, captioner.vocab
    encoder = build_encoder(model.backbone, model.pretrained, model.image_fit, model.image_size).to(device)
    vocab = Vocabulary.build((c for r in splits["train"] for c in r.captions), config.data.min_word_count)
    return None, encoder, vocab


def train_epochs(scorer: ImageSentenceScorer, features: dict[str, torch.Tensor], captions: dict[str, list],
                 config: ScorerTrainConfig, val_split: str, select: bool, log: Callable) -> tuple[int, list[dict]]:
    """Every epoch, with validation R@K after each; with `select` the epoch of the best R@1+R@5+R@10 sum
    is restored, else the last one is kept. Returns (kept epoch, history)."""
    optimizer = torch.optim.Adam(scorer.parameters(), lr=config.learning_rate)
    chooser, best, history = random.Random(config.seed), None, []
    for epoch in range(1, config.epochs + 1):
        hardest = config.hardest_negatives and epoch > config.warmup_epochs
        loss = train_epoch(scorer, optimizer, features["train"], captions["train"], config, chooser, hardest)
        val = retrieval_metrics(scorer, features[val_split], captions[val_split])
        history.append({"epoch": epoch, "loss": round(loss, 4), **{k: round(v, 2) for k, v in val.items()}})
        log(json.dumps(history[-1]))
        if select and (best is None or val["rsum"] > best[0]):
            best = (val["rsum"], {k: v.detach().clone() for k, v in scorer.state_dict().items()}, epoch)
    if best is None:
        return config.epochs, history
    scorer.load_state_dict(best[1])
    return best[2], history


def fit(config: ScorerConfig, log: Callable = print) -> dict[str, Any]:
    """Train (keeping the best validation epoch when val is held out), then measure on the eval split."""
    run_dir = prepare_run_dir(Path(config.run_dir))
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device, config.train.threads)
    splits = load_dataset(config.data, log=log)
    val_split = "val" if splits["val"] else "test"
    eval_split = config.eval.split if splits.get(config.eval.split) else "val"
    if not splits["train"] or not splits[val_split] or not splits[eval_split]:
        raise DatasetFormatError(f"data.root={config.data.root}: the scorer needs a train split and a val or "
                                 "test split")
    captioner, encoder, vocab = build_parts(config, splits, device, log)
    features = {name: image_features(encoder, splits[name], config.data, device, log)
                for name in {"train", val_split, eval_split}}
    captions = {name: caption_ids(splits[name], vocab, config.data.max_caption_length) for name in features}
    model = config.scorer
    settings = ScorerSettings(features["train"].shape[-1], model.embed_size, model.hidden_size, model.num_layers,
                              model.cell, model.joint_size, model.pooling, model.dropout)
    scorer = ImageSentenceScorer(vocab, settings).to(device)
    select = val_split != eval_split  # never pick an epoch on the split the results are reported on
    kept_epoch, history = train_epochs(scorer, features, captions, config.train, val_split, select, log)
    metrics: dict[str, Any] = {"split": eval_split, "kept_epoch": kept_epoch,
                               "selected_on": val_split if select else None, "history": history,
                               "retrieval": retrieval_metrics(scorer, features[eval_split], captions[eval_split])}
    if captioner is not None:
        metrics["rerank"] = measure_rerank(captioner, scorer, features, splits, val_split, eval_split, config.eval)
    save_checkpoint(scorer_payload(scorer, asdict(config), metrics), run_dir / "scorer.pt")
    write_atomically(run_dir / "scorer_metrics.json", json.dumps(metrics, indent=2))
    write_atomically(run_dir / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))
    return metrics


def measure_rerank(captioner: Captioner, scorer: ImageSentenceScorer, features: dict[str, torch.Tensor],
                   splits: dict[str, list[ImageRecord]], val_split: str, eval_split: str,
                   config: ScorerEvalConfig) -> dict[str, Any]:
    """BLEU with and without reranking on the eval split; the weight is tuned on val when val is held out."""
    weight, tuned_on = config.rerank_weight, None
    if config.tune_rerank_weight and val_split != eval_split:
        on_val = rerank_bleu(captioner, scorer, features[val_split], splits[val_split], config, RERANK_SWEEP)
        weight = float(max(RERANK_SWEEP, key=lambda w: on_val["sweep_bleu4"][str(w)]))
        tuned_on = {"split": val_split, "sweep_bleu4": on_val["sweep_bleu4"]}
    sweep = (weight,) + tuple(w for w in RERANK_SWEEP if w != weight)
    result = rerank_bleu(captioner, scorer, features[eval_split], splits[eval_split], config, sweep)
    return {**result, "tuned_on": tuned_on, "beam_size": config.beam_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="scorer YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    try:
        config = load_scorer_config(args.config, args.overrides)
        metrics = fit(config)
    except (ConfigError, DatasetFormatError, CheckpointError, EncoderError, PermissionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {key: value for key, value in metrics.items() if key != "history"}
    print(json.dumps(summary, indent=2))
    print(config.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
