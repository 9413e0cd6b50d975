"""Data-parallel training across processes with PyTorch's own torch.distributed and DistributedDataParallel.

    torchrun --nproc_per_node=4 train.py --config configs/shapes.yaml                       # 4 GPUs, one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 train.py ...

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE. Without WORLD_SIZE (plain
`python train.py`), or with WORLD_SIZE=1, no process group is created and every helper here does what a
single process would do.

Synchronous data-parallel SGD (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"):
every process holds a full replica and takes its share of each step's images; DDP averages the gradients
during backward, ḡ = (1/W) Σ_r g_r, so W processes of B images make one step on W·B images. Their linear
scaling rule, η = W · η_base after a warm-up, is `train.scale_lr` (off by default: the rate stays as set).

The order of the images is the single process's: batches.epoch_batches(seed, epoch) cuts the epoch into
batches of B, and step k of the epoch takes batches kW .. kW+W-1, batch kW+r on rank r. The last round is
completed with the epoch's first batches (as torch's DistributedSampler pads), so every rank takes the same
number of steps and none waits forever in an all-reduce.

Validation and test: the generation batches (eval.batch_size images each) are dealt round-robin to the
ranks and the captions all-gathered back into the original order. Every batch holds the same images as in
a single process, so the captions and the BLEU score are those of a single-process `evaluate`.

Only rank 0 writes (logs, checkpoints, metrics); data preparation that writes files (the shapes generator,
the feature cache) runs on rank 0 first while the others wait (`main_first`). Multi-node runs expect
data.root, the feature cache and run_dir on a filesystem that every node sees.
"""
from __future__ import annotations

import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Item = TypeVar("Item")


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in the job; the default is a single process."""

    rank: int = 0  # index of this process among all of them; rank 0 is the one that writes
    world_size: int = 1  # processes in the job (W)
    local_rank: int = 0  # index on this machine: which GPU this process drives
    local_world_size: int = 1  # processes on this machine; they share its memory (inputs.BANK_BUDGET_BYTES)
    backend: str = ""  # nccl (CUDA) | gloo (CPU); "" = no process group
    device: torch.device = torch.device("cpu")  # where collective operations put their tensors

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Cluster()


def read_environment(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The Cluster that torchrun's RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE describe; SINGLE
    without WORLD_SIZE."""
    if "WORLD_SIZE" not in environ:
        return SINGLE
    values = {}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        raw = environ.get(name, "1" if name == "LOCAL_WORLD_SIZE" else "0")
        if not raw.isdigit():
            raise ValueError(f"environment variable {name}={raw!r}: expected a non-negative integer (torchrun sets it)")
        values[name] = int(raw)
    if not values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(f"environment variables RANK={values['RANK']}, WORLD_SIZE={values['WORLD_SIZE']}: "
                         "expected 0 <= RANK < WORLD_SIZE")
    return Cluster(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], max(values["LOCAL_WORLD_SIZE"], 1))


def setup(device: torch.device) -> tuple[Cluster, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) -> (cluster, this process's device).

    On CUDA each process drives GPU LOCAL_RANK, whatever train.device named."""
    cluster = read_environment()
    if not cluster.enabled:
        return SINGLE, device
    if device.type == "cuda":
        if cluster.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={cluster.local_rank}: this machine has {torch.cuda.device_count()} GPUs; "
                             "start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return replace(cluster, backend=backend, device=device), device


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, cluster: Cluster) -> nn.Module:
    """The module the training step calls: DDP around `model` (same parameters), or `model` itself."""
    if not cluster.enabled:
        return model
    device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)  # broadcasts rank 0's weights once


def seed_rank(seed: int, cluster: Cluster) -> None:
    """Give each rank its own dropout masks; call after `wrap`, which made the weights identical."""
    if cluster.enabled:
        random.seed(seed * 1_000_003 + cluster.rank)
        torch.manual_seed(seed * 1_000_003 + cluster.rank)


def steps_per_epoch(num_batches: int, cluster: Cluster) -> int:
    """Optimizer steps that one epoch of `num_batches` single-process batches takes with W ranks."""
    return math.ceil(num_batches / cluster.world_size)


def shard_batches(batches: Sequence[Item], cluster: Cluster) -> list[Item]:
    """This rank's batches, in step order: global batch kW+r goes to rank r at step k (see the module)."""
    W = cluster.world_size
    if W == 1 or not batches:
        return list(batches)
    missing = -len(batches) % W  # to complete the last round, from the epoch's first batches
    padded = list(batches) + [batches[index % len(batches)] for index in range(missing)]
    return padded[cluster.rank :: W]


def sync_buffers(model: nn.Module, cluster: Cluster) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at the start
    of each forward, so after the last training step the ranks' copies differ; validation on every rank
    must use the statistics that rank 0 saves, or its BLEU would not be the checkpoint's."""
    if cluster.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool, cluster: Cluster) -> bool:
    """True when `flag` is true on some rank, so that all ranks take the same branch (stop, error)."""
    if not cluster.enabled:
        return bool(flag)
    votes = torch.tensor([1.0 if flag else 0.0], device=cluster.device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def gather_objects(value: Any, cluster: Cluster) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; [value] for a single process."""
    if not cluster.enabled:
        return [value]
    gathered: list[Any] = [None] * cluster.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def run_sharded(work: Callable[[int, int], list[Item]], num_items: int, chunk_size: int,
                cluster: Cluster) -> list[Item]:
    """work(start, stop) on chunks of `chunk_size` items dealt round-robin to the ranks; every rank gets
    all the results, in item order. A single process runs every chunk, in order."""
    starts = list(range(0, num_items, chunk_size))
    mine = {start: work(start, min(start + chunk_size, num_items))
            for start in starts[cluster.rank :: cluster.world_size]}  # this rank's chunks, round-robin
    results: dict[int, list[Item]] = {}
    for part in gather_objects(mine, cluster):
        results.update(part)
    return [item for start in starts for item in results[start]]


def barrier(cluster: Cluster) -> None:
    if cluster.enabled:
        dist.barrier()


@contextmanager
def main_first(cluster: Cluster) -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: rank 0 writes shared files, the rest read them."""
    if not cluster.is_main:
        barrier(cluster)
    yield
    if cluster.is_main:
        barrier(cluster)


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's rate; call before the scheduler is built (it reads them as base rates)."""
    for group in optimizer.param_groups:
        group["lr"] *= factor


def rebase_learning_rates(scheduler: torch.optim.lr_scheduler.LambdaLR, base_rates: Sequence[float]) -> None:
    """After loading a scheduler saved by a run with another number of processes (train.scale_lr):
    this run's base rates, at the saved step of the schedule."""
    scheduler.base_lrs = list(base_rates)
    for group, base, factor in zip(scheduler.optimizer.param_groups, base_rates, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def describe(cluster: Cluster, batch_size: int, learning_rate: float, scale_lr: bool) -> str:
    """The log line that states the effective batch and the learning-rate policy."""
    if not cluster.enabled:
        return f"single process | batch {batch_size} | learning rate {learning_rate:g}"
    factor = cluster.world_size if scale_lr else 1
    policy = (f"x{factor} by train.scale_lr (linear scaling rule)" if scale_lr
              else "not scaled (train.scale_lr=false)")
    return (f"data parallel: {cluster.world_size} processes ({cluster.backend}) | batch {batch_size} per process, "
            f"effective {batch_size * cluster.world_size} | learning rate {learning_rate * factor:g}, {policy}")
