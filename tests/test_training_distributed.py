"""Data-parallel training (captioner/distributed.py) and bf16 mixed precision.

The end-to-end tests run `python -m torch.distributed.run --nproc_per_node=2 --standalone train.py` with two
CPU processes (gloo) on the tiny config, then check that only rank 0 wrote, that each rank took half of
every epoch, that the validation and test scores equal a single-process `evaluate` of the checkpoints, and
that a DDP run resumes. The rest runs in-process: sharding, the order of gathered captions (ranks simulated
by threads), learning-rate scaling, and bf16 autocast against fp32.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, tiny_overrides
from torch import nn

from captioner import distributed, evaluation, load_checkpoint
from captioner.config import EvalConfig, load_config
from captioner.data import load_dataset
from captioner.data.records import ImageRecord
from captioner.decoding import Decoding
from captioner.distributed import Cluster
from captioner.evaluation import evaluate
from captioner.model import Captioner
from captioner.training.optimizer import autocast, build_scheduler
from captioner.vocab import Vocabulary

CONFIG = str(REPO / "configs/shapes.yaml")
EVAL_BATCH = ["eval.batch_size=4"]  # 16 val/test images -> 4 generation batches, 2 per rank
SCORE_KEYS = ("num_images", "beam_size", "bleu1", "bleu2", "bleu3", "bleu4", "distinct_captions", "content_accuracy")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(*arguments: str, script: Path = REPO / "train.py") -> subprocess.CompletedProcess:
    """train.py (or a script that wraps it) under torchrun with 2 CPU processes; the environment of a plain
    shell (no torchrun variables)."""
    environment = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARS}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(script), "--config", CONFIG, *arguments, "train.device=cpu"]  # gloo, even beside a GPU
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny shapes dataset, generated once for this module (the ranks then find it complete)."""
    root = tmp_path_factory.mktemp("ddp") / "data"
    load_dataset(load_config(CONFIG, tiny_overrides(root, root.parent / "unused")).data, log=lambda message: None)
    return root


@pytest.fixture(scope="module")
def ddp_run(data_root) -> tuple[Path, subprocess.CompletedProcess]:
    """Two epochs of the tiny config with 2 processes; returns (run directory, the finished process)."""
    run_dir = data_root.parent / "run"
    return run_dir, torchrun(*tiny_overrides(data_root, run_dir), *EVAL_BATCH)


def evaluate_single_process(checkpoint: Path, split: str, beam_size: int) -> tuple[dict, list[str]]:
    """The reference: one process, one thread (as the ranks ran), the checkpoint's own config and data."""
    model = load_checkpoint(checkpoint)
    records = load_dataset(model.run_config.data, log=lambda message: None)[split]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = model.run_config.eval
        return evaluate(model, records, split, replace(model.decoding, beam_size=beam_size), settings.batch_size,
                        meteor=settings.meteor)
    finally:
        torch.set_num_threads(threads)


def test_ddp_run_writes_once_from_rank_zero(ddp_run):
    run_dir, result = ddp_run
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    # the "vocabulary ... | run:" line, the paths of best.pt and metrics.json, and the final line: rank 0 only
    assert result.stdout.count(str(run_dir)) == 4
    assert result.stdout.count("data parallel: 2 processes (gloo) | batch 16 per process, effective 32") == 1
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(history) == 2  # one line per epoch: a second writer would double it
    for name in ("last.pt", "best.pt", "metrics.json", "config.yaml"):
        assert (run_dir / name).is_file(), name


def test_each_rank_takes_half_of_every_epoch(ddp_run):
    run_dir, _ = ddp_run
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2
    assert checkpoint["progress"]["step"] == 4  # 64 images / 16 per batch = 4 batches per epoch, 2 ranks: 2 steps
    assert len(checkpoint["rank_rng"]) == 2
    assert not torch.equal(checkpoint["rank_rng"][0]["torch"], checkpoint["rank_rng"][1]["torch"])


def test_validation_bleu_equals_single_process_evaluation(ddp_run):
    run_dir, _ = ddp_run
    reported = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    metrics, _ = evaluate_single_process(run_dir / "last.pt", "val", beam_size=1)  # val_beam_size=1
    assert {key: reported[key] for key in SCORE_KEYS} == {key: metrics[key] for key in SCORE_KEYS}
    assert reported["bleu1"] > 0


def test_test_metrics_equal_single_process_evaluation(ddp_run):
    run_dir, _ = ddp_run
    reported = json.loads((run_dir / "metrics.json").read_text())
    metrics, captions = evaluate_single_process(run_dir / "best.pt", "test", beam_size=2)
    assert {key: reported[key] for key in SCORE_KEYS} == {key: metrics[key] for key in SCORE_KEYS}
    assert [example["generated"] for example in reported["examples"]] == captions[:10]


def test_ddp_run_resumes(ddp_run, data_root, tmp_path):
    run_dir, _ = ddp_run
    resumed_dir = tmp_path / "resumed"
    result = torchrun("--resume", str(run_dir / "last.pt"), *tiny_overrides(data_root, resumed_dir),
                      *EVAL_BATCH, "train.epochs=3")
    assert result.stdout.count("resumed from") == 1
    checkpoint = torch.load(resumed_dir / "last.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 3 and checkpoint["progress"]["step"] == 6
    assert [entry["epoch"] for entry in checkpoint["history"]] == [1, 2, 3]


REPORT_WEIGHTS = """
import sys
sys.path.insert(0, REPOSITORY)  # this checkout's captioner, not whichever one is installed
from captioner.training import trainer as training_loop
test = training_loop.Trainer.test
def report_then_test(self):  # before test() loads best.pt into every rank; a file each: stdout interleaves
    total = sum(p.detach().double().sum().item() for p in self.model.parameters())
    with open(f"WEIGHTS_DIRECTORY/rank{self.cluster.rank}.txt", "w") as handle:
        handle.write(repr(total))
    return test(self)
training_loop.Trainer.test = report_then_test
import train
sys.exit(train.main(sys.argv[1:]))
"""


def test_self_critical_epochs_keep_the_ranks_in_step(ddp_run, data_root, tmp_path):
    # The self-critical loss must go through the DDP wrapper: a loss computed beside it would give each
    # rank its own gradient, and the ranks' weights would drift apart without any error.
    run_dir, _ = ddp_run
    script = tmp_path / "report_weights.py"
    script.write_text(REPORT_WEIGHTS.replace("REPOSITORY", repr(str(REPO))).replace("WEIGHTS_DIRECTORY", str(tmp_path)))
    torchrun("--resume", str(run_dir / "last.pt"), *tiny_overrides(data_root, tmp_path / "run"), *EVAL_BATCH,
             "train.self_critical_epochs=1", script=script)
    weights = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert weights[0] == weights[1], weights
    reported = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    assert reported["epoch"] == 3 and reported["train_reward"] >= 0.0


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup(torch.device("cpu")) == (distributed.SINGLE, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: still a plain single process
    assert distributed.setup(torch.device("cpu"))[0] == distributed.SINGLE
    assert not torch.distributed.is_initialized()


def test_torchrun_variables_describe_the_process():
    variables = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    cluster = distributed.read_environment(variables)
    assert cluster == Cluster(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert cluster.enabled and not cluster.is_main


@pytest.mark.parametrize("variables, fragment", [
    ({"WORLD_SIZE": "2", "RANK": "one"}, "RANK='one': expected a non-negative integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "expected 0 <= RANK < WORLD_SIZE"),
])
def test_bad_torchrun_variables_are_named(variables, fragment):
    with pytest.raises(ValueError, match=fragment.replace("<", ".")):
        distributed.read_environment(variables)


@pytest.mark.parametrize("num_batches, world_size", [(10, 1), (10, 2), (10, 3), (2, 4), (0, 2)])
def test_shards_follow_the_single_process_order(num_batches, world_size):
    batches = list(range(num_batches))
    shards = [distributed.shard_batches(batches, Cluster(rank, world_size)) for rank in range(world_size)]
    steps = distributed.steps_per_epoch(num_batches, Cluster(0, world_size))
    assert all(len(shard) == steps for shard in shards)  # no rank waits for another in an all-reduce
    in_step_order = [shard[step] for step in range(steps) for shard in shards]
    assert in_step_order[:num_batches] == batches  # step k: batches kW .. kW+W-1
    assert in_step_order[num_batches:] == [batch % num_batches for batch in range(len(in_step_order) - num_batches)]


class IndexCaptioner(nn.Module):
    """Image i (all of its pixels equal i) gets caption CAPTIONS[i], so any reordering changes the score."""

    def __init__(self, captions: list[str]) -> None:
        super().__init__()
        self.captions = captions
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate() reads the device from the parameters
        self.decoding = EvalConfig().decoding()  # evaluate() records its settings

    def generate(self, images: torch.Tensor, decoding: Decoding) -> list[SimpleNamespace]:
        return [SimpleNamespace(words=[self.captions[int(image.flatten()[0])].split()]) for image in images]


def simulated_all_gather(world_size: int):
    """distributed.gather_objects for `world_size` threads standing in for the ranks."""
    slots: list = [None] * world_size
    arrived = threading.Barrier(world_size)

    def gather(value, cluster):
        slots[cluster.rank] = value
        arrived.wait()
        gathered = list(slots)
        arrived.wait()  # nobody overwrites a slot before everyone has read
        return gathered

    return gather


@pytest.mark.parametrize("world_size", [2, 3])
def test_gathered_captions_keep_the_original_order(world_size, monkeypatch):
    references = [f"a {colour} {shape}" for colour in ("red", "green", "blue") for shape in ("circle", "star", "cube")]
    records = [ImageRecord(str(i), f"missing/{i}.jpg", (text, "a shape"), "val") for i, text in enumerate(references)]
    generated = [text if i % 2 else "a shape on grey" for i, text in enumerate(references)]
    model = IndexCaptioner(generated)
    pixels = torch.arange(len(records)).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)  # (N, 3, 2, 2) image i = i
    expected = evaluate(model, records, "val", batch_size=2, pixels=pixels)
    assert expected[1] == generated
    gather = simulated_all_gather(world_size)
    monkeypatch.setattr(distributed, "gather_objects", gather)
    monkeypatch.setattr(evaluation, "gather_objects", gather)  # the scores' gather, imported by name
    results: list = [None] * world_size

    def rank(index: int) -> None:
        results[index] = evaluate(model, records, "val", None, 2, pixels, Cluster(index, world_size))

    threads = [threading.Thread(target=rank, args=(index,)) for index in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [expected] * world_size  # 5 batches of 2 (the last of 1), dealt unevenly


def test_learning_rate_scaling_and_rebase_on_resume():
    config = load_config(CONFIG, ["train.warmup_steps=2", "train.epochs=1"])
    parameter = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([parameter], lr=config.train.learning_rate)
    distributed.scale_learning_rates(optimizer, 4)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    assert scheduler.base_lrs == [pytest.approx(4 * config.train.learning_rate)]
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lr_at_step_5 = optimizer.param_groups[0]["lr"]
    distributed.rebase_learning_rates(scheduler, [config.train.learning_rate])  # resumed with 1 process
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at_step_5 / 4)
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(config.train.learning_rate * scheduler.lr_lambdas[0](6))
    line = distributed.describe(Cluster(0, 4, backend="nccl"), 32, 1e-3, scale_lr=True)
    assert "effective 128" in line and "learning rate 0.004" in line and "train.scale_lr" in line


def tiny_captioner() -> tuple[Captioner, torch.Tensor, torch.Tensor]:
    """A small decoder, image features (B, F) and captions (B*C, L); the encoder under bf16 is covered by
    test_trainer_steps_in_bf16_when_asked."""
    torch.manual_seed(0)
    config = load_config(CONFIG, ["model.embed_size=32", "model.hidden_size=48", "model.dropout=0",
                                  "model.attention=false"])  # pooled features (B, F): the plain decoder
    vocab = Vocabulary.build(["a red circle above a blue square", "two green triangles left of a star"], 1)
    model = Captioner(config.model, vocab)
    features = torch.randn(4, model.encoder.feature_dim)  # (B, F)
    captions = torch.randint(4, len(vocab), (20, 12))  # (B*C, L), C = 5
    captions[:, 0] = vocab.start_id
    return model, features, captions


def loss_and_gradients(model: Captioner, features: torch.Tensor, captions: torch.Tensor,
                       precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    with autocast(precision, torch.device("cpu")):
        _, loss = model(None, captions, features=features, captions_per_image=5)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_bf16_autocast_stays_close_to_fp32():
    model, features, captions = tiny_captioner()
    loss_32, gradients_32 = loss_and_gradients(model, features, captions, "fp32")
    loss_16, gradients_16 = loss_and_gradients(model, features, captions, "bf16")
    assert loss_16 != loss_32  # autocast really ran in bfloat16
    assert loss_16.dtype == torch.float32 and torch.isfinite(loss_16)  # the loss itself is computed in fp32
    assert abs(loss_16 - loss_32) < 0.01 * loss_32
    assert torch.isfinite(gradients_16).all()
    assert torch.linalg.vector_norm(gradients_16 - gradients_32) < 0.05 * torch.linalg.vector_norm(gradients_32)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # clipping and Adam see fp32 gradients


def test_bf16_keeps_the_lstm_cell_state_in_fp32():
    model, _, _ = tiny_captioner()
    with autocast("bf16", torch.device("cpu")):
        image = model.decoder.image_projection(torch.randn(3, model.encoder.feature_dim))  # (3, E) in bf16
        words = model.decoder.embedding(torch.ones(3, 7, dtype=torch.long))  # (3, 7, E) in fp32
        output, (h, c) = model.decoder.rnn(torch.cat([image.unsqueeze(1), words], dim=1))  # cat promotes to fp32
    assert image.dtype == torch.bfloat16
    assert c.dtype == torch.float32 and h.dtype == torch.float32 and torch.isfinite(output).all()


def test_trainer_steps_in_bf16_when_asked(data_root, tmp_path):
    from captioner.data.batches import collate
    from captioner.training.trainer import Trainer

    losses = {}
    for precision in ("fp32", "bf16"):
        overrides = [*tiny_overrides(data_root, tmp_path / precision), f"train.precision={precision}"]
        trainer = Trainer(load_config(CONFIG, [*overrides, "model.dropout=0"]), log=lambda message: None)
        dataset = trainer.training_data()
        losses[precision] = trainer.train_step(*collate([dataset[i] for i in range(4)], trainer.vocab.pad_id))
    assert losses["bf16"] != losses["fp32"] and abs(losses["bf16"] - losses["fp32"]) < 0.01 * losses["fp32"]
