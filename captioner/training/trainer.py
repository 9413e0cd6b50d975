"""The training loop: teacher forcing, Adam(W), gradient-norm clipping, warm-up + cosine schedule,
free-running validation BLEU after every epoch, best/last checkpoints, resume, and a final test
evaluation written to <run_dir>/metrics.json. Used by train.py; never imports gradio.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from captioner import distributed
from captioner.checkpoint import CheckpointError, check_compatible, read_checkpoint, save_checkpoint
from captioner.config import Config, save_yaml, to_dict
from captioner.data import Splits, load_dataset
from captioner.data.batches import CaptionedImages, epoch_batches, make_loader
from captioner.data.paths import shown_path
from captioner.data.records import ImageRecord
from captioner.devices import resolve_device
from captioner.evaluation import evaluate
from captioner.files import write_atomically
from captioner.metrics.report import epoch_line
from captioner.model import Captioner, current_weights
from captioner.training.init_from import copy_initial_weights, extended_vocabulary, fine_tuning_start
from captioner.training.inputs import RunInputs, check_splits
from captioner.training.memory import check_model_fits
from captioner.training.optimizer import autocast, build_optimizer, build_scheduler
from captioner.training.progress import (
    CHECKPOINT_METRICS,
    Progress,
    best_score_on_disk,
    check_resumable,
    check_resume_changes,
    resume_target,
)
from captioner.training.randomness import restore_rng, rng_state, seed_everything
from captioner.training.run_dir import check_run_dir_is_free, claim_run_dir, prepare_run_dir, write_history
from captioner.training.self_critical import SelfCriticalLoss
from captioner.training.stops import EXIT_INTERRUPTED, NonFiniteLoss, StopOnSignal, TrainingInterrupted
from captioner.training.tensorboard import open_log, require_tensorboard
from captioner.vocab import Vocabulary


class Trainer:
    """Holds everything one run needs; `fit()` trains, validates, checkpoints and tests."""

    def __init__(self, config: Config, resume: str | Path | None = None, log=print, force: bool = False,
                 splits: Splits | None = None) -> None:
        """force: start over in a run_dir that holds another run (train.py --force), removing its checkpoints.
        splits: the records per split to use instead of reading config.data (cross-validation's folds)."""
        self.config, self.log = config, log
        self.interactive = sys.stderr.isatty()  # a terminal gets tqdm bars; a log file gets plain lines
        resume = resume_target(resume) if resume else None
        resumed = self.refuse_before_work(resume, force)
        self.build(splits, resumed, resume)
        self.claim(resumed, resume, force)

    def refuse_before_work(self, resume: Path | None, force: bool) -> dict[str, Any] | None:
        """Every check that needs no data, in seconds: a bad setting, resume target or run_dir fails
        before the data is read or anything is written. Returns the checkpoint to resume, if any."""
        config = self.config
        require_tensorboard(config.train.tensorboard)  # a missing package fails before any work
        resumed = read_checkpoint(resume) if resume else None
        config, self.initial = fine_tuning_start(config, resumed)  # train.init_from: its model config and weights
        self.config = config
        if resumed:
            check_resume_changes(resumed, config, resume)
            check_resumable(resumed, resume)
        self.run_dir = prepare_run_dir(Path(config.run_dir))
        check_run_dir_is_free(self.run_dir, resume, force)
        saved_threads = resumed["progress"].get("threads", 0) if resumed else 0  # check_resumable: ints
        self.device = resolve_device(config.train.device, config.train.threads or saved_threads)
        autocast(config.train.precision, self.device)  # bf16 on a GPU without it fails before any work
        check_model_fits(config.model, self.device)  # model.hidden_size=200000 fails here, not after the data
        return resumed

    def build(self, splits: Splits | None, resumed: dict[str, Any] | None, resume: Path | None) -> None:
        """Seed, join the process group, read the data, build the model, optimizer and schedule, and
        restore them from the checkpoint when resuming."""
        config = self.config
        seed_everything(config.train.seed)
        self.cluster, self.device = distributed.setup(self.device)  # under torchrun: join the group, one GPU per rank
        if not self.cluster.is_main:
            self.log = _quiet  # only rank 0 logs
        with distributed.main_first(self.cluster):  # rank 0 generates the shapes data if needed, the others read it
            self.splits = splits if splits is not None else load_dataset(config.data, log=self.log)
        check_splits(self.splits, config.data.root)
        captions = [caption for record in self.splits["train"] for caption in record.captions]
        initial = self.initial
        if resumed:
            self.vocab = Vocabulary.from_dict(resumed["vocab"])
        elif initial:
            self.vocab = extended_vocabulary(initial.vocab, captions, config.data.min_word_count)
        else:
            self.vocab = Vocabulary.build(captions, config.data.min_word_count)
        self.model = Captioner(config.model, self.vocab).to(self.device)
        if initial:  # before the feature cache keys on the encoder's weights
            copy_initial_weights(self.model, initial, config.train.new_word_init)
            self.log(f"fine-tuning {config.train.init_from}: its {len(initial.vocab)} words, "
                     f"{len(self.vocab) - len(initial.vocab)} new ones")
            self.initial = None  # its weights are copied: free its memory
        self.model.decoding = config.eval.decoding()  # validation, test and self-critical samples decode so
        self.optimizer = build_optimizer(self.model, config)
        self.inputs = RunInputs(config, self.model.encoder, self.cluster, self.log)
        self.training_model = distributed.wrap(self.model, self.cluster)  # DDP: gradients averaged across ranks
        distributed.seed_rank(config.train.seed, self.cluster)
        if config.train.scale_lr:
            distributed.scale_learning_rates(self.optimizer, self.cluster.world_size)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch())
        self.progress = Progress(checkpoint_metric=config.train.checkpoint_metric)
        self.history: list[dict[str, Any]] = []
        self.self_critical: SelfCriticalLoss | None = None  # built when the self-critical epochs begin
        if resumed:
            self.restore(resumed, resume)
        self.progress.threads = torch.get_num_threads() if self.device.type == "cpu" else 0

    def claim(self, resumed: dict[str, Any] | None, resume: Path | None, force: bool) -> None:
        """Lock run_dir and make its files this run's (rank 0), then say what runs where."""
        config = self.config
        self.lock = claim_run_dir(self.run_dir, resume, force, self.history) if self.cluster.is_main else None
        if resumed:  # every rank: they decide alike
            self.progress.best_score = best_score_on_disk(resume.parent, self.progress.best_score,
                                                          config.train.checkpoint_metric)
            if self.cluster.is_main and resume.resolve().parent != self.run_dir.resolve():
                self.carry_best_checkpoint(resume.parent)
        if self.cluster.is_main:
            save_yaml(config, self.run_dir / "config.yaml")
        self.board = open_log(config.train.tensorboard and self.cluster.is_main, self.run_dir)
        if self.cluster.enabled:
            self.log(distributed.describe(self.cluster, config.train.batch_size, config.train.learning_rate,
                                          config.train.scale_lr))
        self.log(f"vocabulary: {len(self.vocab)} words | parameters: {sum(p.numel() for p in self.model.parameters()):,}"
                 f" | device: {self.device}{self.threads()} | run: {self.run_dir}")

    def threads(self) -> str:
        """", 2 threads" on the CPU: train.threads, or the cores free at the start (devices.free_cores)."""
        if self.device.type != "cpu":
            return ""
        count = torch.get_num_threads()
        return f", {count} thread{'s' if count > 1 else ''}"

    def carry_best_checkpoint(self, source: Path) -> None:
        """A resume into another run_dir continues the run there: its best.pt comes along, so the final
        test evaluates the best weights and the best.pt path printed at the end exists."""
        best = source / "best.pt"
        if best.is_file():
            write_atomically(self.run_dir / "best.pt", best.read_bytes())
            self.log(f"best.pt of {source} copied into {self.run_dir}")

    def steps_per_epoch(self) -> int:
        batches = math.ceil(len(self.splits["train"]) / self.config.train.batch_size)  # of one process
        return distributed.steps_per_epoch(batches, self.cluster)

    def fit(self) -> dict[str, Any]:
        """Train, validating and saving after every epoch, then test; run_dir stays locked until it returns."""
        try:
            return self.train_then_test()
        finally:
            if self.lock is not None:
                self.lock.release()

    def train_then_test(self) -> dict[str, Any]:
        train = self.config.train
        dataset = self.training_data()
        self.val_inputs = self.inputs.of(self.validation_records())
        with StopOnSignal() as stop:
            while self.progress.epoch < train.epochs + train.self_critical_epochs and not self.reached_max_steps():
                self.train_epoch(dataset, stop)
                self.end_epoch()
                if distributed.any_rank(stop.requested, self.cluster):  # signalled during validation: last.pt saved
                    raise TrainingInterrupted(self.run_dir / "last.pt")
        return self.test()

    def training_data(self) -> CaptionedImages:
        records, data = self.splits["train"], self.config.data
        bank = self.inputs.of(records)
        return CaptionedImages(records, self.vocab, self.model.encoder.preprocess, data.max_caption_length,
                               self.config.train.captions_per_image, self.config.train.seed, bank)

    def train_epoch(self, dataset: CaptionedImages, stop: StopOnSignal) -> None:
        train, epoch = self.config.train, self.progress.epoch
        dataset.epoch = epoch
        batches = epoch_batches(len(dataset), train.batch_size, train.seed, epoch)[self.progress.batch :]
        batches = distributed.shard_batches(batches, self.cluster)  # this rank's batch of each step
        loader = make_loader(dataset, batches, self.vocab.pad_id, train.num_workers, self.device.type == "cuda")
        self.model.train()
        if epoch >= train.epochs:
            self.start_self_critical_epoch(dataset)
        title = f"epoch {epoch + 1}/{train.epochs + train.self_critical_epochs}"
        bar = tqdm(loader, desc=title, unit="batch", dynamic_ncols=True, mininterval=1.0,
                   disable=not (self.cluster.is_main and self.interactive))  # a log file gets plain lines
        started, captions_seen = time.perf_counter(), 0
        for indices, (inputs, captions) in zip(batches, bar):
            loss = self.train_step(inputs, captions, indices)
            self.progress.batch += self.cluster.world_size  # global batches done: a resume skips them, whatever W
            captions_seen += captions.size(0) * self.cluster.world_size
            if self.progress.step % train.log_every == 0 or self.progress.batch == 1:
                rate = captions_seen / (time.perf_counter() - started)
                reward = {"reward": f"{self.progress.last_reward:.3f}"} if epoch >= train.epochs else {}
                numbers = {"loss": f"{loss:.3f}", **reward, "captions_per_s": f"{rate:.0f}",
                           "lr": f"{self.optimizer.param_groups[0]['lr']:.1e}"}
                bar.set_postfix(numbers)
                if not self.interactive and self.cluster.is_main:  # a log file: one plain line, no bar frames
                    print(self.progress_line(title, numbers), file=sys.stderr, flush=True)
                if self.board:
                    self.board.step(self.progress.step, loss, self.optimizer.param_groups[0]["lr"],
                                    self.progress.last_reward if reward else None)
            if distributed.any_rank(stop.requested, self.cluster):
                self.save("last.pt")
                raise TrainingInterrupted(self.run_dir / "last.pt")
            if self.reached_max_steps():
                break
        self.epoch_seconds = time.perf_counter() - started

    def progress_line(self, title: str, numbers: dict[str, str]) -> str:
        """What the bar's postfix says, as one line of a log file."""
        batches = math.ceil(len(self.splits["train"]) / self.config.train.batch_size)  # global, as progress.batch
        shown = "  ".join(f"{name.replace('_per_s', '/s')} {value}" for name, value in numbers.items())
        return f"{title}  batch {self.progress.batch}/{batches}  step {self.progress.step}  {shown}"

    def start_self_critical_epoch(self, dataset: CaptionedImages) -> None:
        """Self-critical epochs start from the best cross-entropy weights, at their own constant learning
        rate, with the network as generation sees it (eval mode: see SelfCriticalLoss)."""
        train = self.config.train
        distributed.barrier(self.cluster)  # rank 0 has finished writing best.pt
        at_switch = self.progress.epoch == train.epochs and self.progress.batch == 0  # not mid-epoch (resume)
        if at_switch and (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(read_checkpoint(self.run_dir / "best.pt", map_location=self.device)["model"])
            metric = train.checkpoint_metric
            self.log(f"self-critical training from best.pt (val {CHECKPOINT_METRICS[metric]} {self.progress.best_score:.2f})")
        for group in self.optimizer.param_groups:  # an encoder group keeps its ratio to the decoder's rate
            group["lr"] = group["initial_lr"] * train.self_critical_learning_rate / train.learning_rate
        self.model.eval()
        if self.self_critical is None:
            self.self_critical = SelfCriticalLoss(dataset.records, train.self_critical_samples,
                                                  train.self_critical_reward)

    def self_critical_loss(self, features: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """SelfCriticalLoss of one batch; its samples depend only on (seed, step), so a resume replays them."""
        seed = self.config.train.seed * 1_000_003 + self.progress.step
        loss, reward = self.self_critical(self.model, self.training_model, features, indices, seed)
        self.progress.last_reward = reward
        self.progress.reward_sum += reward  # in progress: a resume keeps it
        self.progress.reward_steps += 1
        return loss

    def train_step(self, inputs: torch.Tensor, captions: torch.Tensor, indices: list[int] | None = None) -> float:
        """One optimizer step; inputs are cached features (B, F) with the feature cache, else pixels.
        In the self-critical epochs the loss is SelfCriticalLoss over `indices`, the batch's images."""
        inputs, captions = inputs.to(self.device, non_blocking=True), captions.to(self.device, non_blocking=True)
        cached = self.inputs.cached
        train = self.config.train
        critical = self.progress.epoch >= train.epochs
        with autocast(train.precision, self.device):  # bf16: see optimizer.autocast
            if critical:
                loss = self.self_critical_loss(inputs if cached else self.model.encoder(inputs), indices)
            else:
                _, loss = self.training_model(None if cached else inputs, captions, features=inputs if cached else None,
                                              captions_per_image=train.captions_per_image,
                                              label_smoothing=train.label_smoothing,
                                              scheduled_sampling=train.scheduled_sampling)
        if distributed.any_rank(not torch.isfinite(loss), self.cluster):  # all ranks stop, none waits in backward
            raise NonFiniteLoss(self.progress.step + 1, self.progress.last_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradients = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients)
        if not torch.isfinite(norm):  # a finite loss can still overflow in backward; never step with it
            raise NonFiniteLoss(self.progress.step + 1, self.progress.last_loss, what="gradient norm")
        if train.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), train.grad_clip, norm)
        self.optimizer.step()
        if not critical:  # the self-critical learning rate is constant
            self.scheduler.step()
        self.progress.step += 1
        self.progress.last_loss = loss.item()
        return self.progress.last_loss

    def end_epoch(self) -> None:
        """Validate with free-running generation, then save last.pt and, if improved, best.pt."""
        ev = self.config.eval
        distributed.sync_buffers(self.model, self.cluster)
        decoding = replace(self.model.decoding, beam_size=ev.val_beam_size)
        metrics, captions = evaluate(self.model, self.validation_records(), "val", decoding, ev.batch_size,
                                     cluster=self.cluster, meteor=False,  # the test has it; no choice needs it
                                     **self.inputs.for_evaluation(self.val_inputs))
        self.progress.epoch += 1
        self.progress.batch = 0
        entry = {"epoch": self.progress.epoch, "step": self.progress.step, "train_loss": self.progress.last_loss,
                 "epoch_seconds": round(getattr(self, "epoch_seconds", 0.0), 1), **metrics}
        if self.progress.reward_steps:  # self-critical: mean reward of the epoch's sampled captions
            entry["train_reward"] = round(self.progress.reward_sum / self.progress.reward_steps, 4)
            self.progress.reward_sum, self.progress.reward_steps = 0.0, 0
        self.history.append(entry)
        self.log(epoch_line(entry, self.config.train.epochs + self.config.train.self_critical_epochs, captions[0]))
        if self.board:
            self.board.epoch(self.progress.step, metrics, captions,
                             [record.captions[0] for record in self.validation_records()[: len(captions)]])
        if self.cluster.is_main:
            write_history(self.run_dir, self.history)
        score = entry[self.config.train.checkpoint_metric]  # "epoch": the latest epoch is always best
        if score > self.progress.best_score:
            self.progress.best_score = score
            self.save("best.pt", metrics=metrics)  # before last.pt: a kill in between redoes this epoch on resume
        self.save("last.pt")

    def validation_records(self) -> list[ImageRecord]:
        records = self.splits["val"]  # never test: best.pt is chosen here (check_splits)
        limit = self.config.train.val_max_images
        return records[:limit] if limit else records

    def reached_max_steps(self) -> bool:
        return 0 < self.config.train.max_steps <= self.progress.step

    def save(self, name: str, metrics: dict | None = None) -> None:
        """Write run_dir/name atomically; weights that are not finite are refused, the old file kept."""
        for parameter_name, parameter in self.model.named_parameters():
            if not torch.isfinite(parameter).all():
                raise NonFiniteLoss(self.progress.step, self.progress.last_loss,
                                    what=f"weight {parameter_name} (so {name} was not written)")
        payload = {"config": to_dict(self.config), "vocab": self.vocab.to_dict(), "model": self.model.state_dict(),
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "progress": self.progress.to_dict(), "history": self.history, "rng": rng_state(),
                   "metrics": metrics or {}}
        if self.cluster.enabled:  # every rank's RNG, so that each resumed rank continues its own dropout masks
            payload["rank_rng"] = distributed.gather_objects(rng_state(), self.cluster)
        if self.cluster.is_main:
            save_checkpoint(payload, self.run_dir / name)

    def restore(self, payload: dict[str, Any], path: str | Path) -> None:
        weights = current_weights(payload["model"])
        if len(weights) != len(payload["model"]):  # its optimizer state has a slot per retired weight too
            raise CheckpointError(f"{path}: saved by an earlier version (with {sorted(set(payload['model']) - set(weights))[0]}); "
                                  "it loads for evaluation, the caption command and the demo, but cannot be resumed")
        check_compatible(self.model.state_dict(), weights, path)
        self.model.load_state_dict(weights)
        base_rates = list(self.scheduler.base_lrs)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
            raise CheckpointError(f"{path}: its optimizer or scheduler state does not fit this model's "
                                  f"({type(error).__name__})") from None
        # This run's rates and schedule at the saved step: a resume that changes train.learning_rate or
        # lr_schedule takes effect, and under torchrun the rates are scaled for this run's processes.
        distributed.rebase_learning_rates(self.scheduler, base_rates)
        metric = self.config.train.checkpoint_metric
        self.progress = Progress.from_dict(payload["progress"], metric)
        self.history = list(payload.get("history", []))
        rank_states = payload.get("rank_rng") or []
        restore_rng(rank_states[self.cluster.rank] if len(rank_states) == self.cluster.world_size else payload["rng"])
        self.log(f"resumed from {path} at epoch {self.progress.epoch}, batch {self.progress.batch}")

    def test(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; write metrics.json."""
        best = self.run_dir / "best.pt"
        distributed.barrier(self.cluster)  # rank 0 has finished writing best.pt
        if best.exists():
            self.model.load_state_dict(read_checkpoint(best, map_location=self.device)["model"])
        records = self.splits["test"] or self.splits["val"]
        split = "test" if self.splits["test"] else "val"
        ev = self.config.eval
        inputs = self.inputs.stored_features(records) if self.inputs.cached else None
        metrics, captions = evaluate(self.model, records, split, self.model.decoding, ev.batch_size,
                                     cluster=self.cluster, meteor=ev.meteor, **self.inputs.for_evaluation(inputs))
        metrics["examples"] = [{"image": shown_path(r.path, self.config.data.root), "generated": c,
                                "references": list(r.captions)}
                               for r, c in zip(records[:10], captions[:10])]
        metrics["history"] = self.history
        if self.cluster.is_main:
            write_atomically(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        if self.board:
            self.board.close()
        return metrics


def _quiet(message: str) -> None:
    """The log of every rank but 0."""


__all__ = ["Trainer", "EXIT_INTERRUPTED"]
