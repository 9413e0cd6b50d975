"""What a run optimizes with: Adam(W) over its parameter groups, the learning-rate schedule, and the
numeric format of the forward pass (train.precision)."""
from __future__ import annotations

import math

import torch

from captioner.config import Config
from captioner.model import Captioner


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The training forward pass's numeric format (train.precision).

    bf16: autocast runs matmuls and convolutions in bfloat16 and keeps softmax, the loss and other
    reductions in fp32; weights, gradients and optimizer state stay fp32. bfloat16 has fp32's 8-bit
    exponent, so gradients do not underflow: no GradScaler, nothing to unscale, and gradient clipping
    reads the true fp32 gradient norm. fp32: autocast is off (the default, on CPU too)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision=bf16: this GPU has no bfloat16 support; use train.precision=fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_optimizer(model: Captioner, config: Config) -> torch.optim.Optimizer:
    """Adam(W) over the trainable parameters: fine-tuned encoder blocks in their own group at
    train.encoder_learning_rate (pretrained weights need small steps), the rest at train.learning_rate."""
    train = config.train
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    finetuned = [p for block in model.encoder.trainable_blocks for p in block.parameters()]
    finetuned_ids = {id(p) for p in finetuned}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in finetuned_ids]
    groups = [{"params": rest, "lr": train.learning_rate}]
    if finetuned:
        groups.append({"params": finetuned, "lr": train.encoder_learning_rate})
    return optimizers[train.optimizer](groups, lr=train.learning_rate, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 at the last step (or constant)."""
    train = config.train
    total = train.max_steps or train.epochs * steps_per_epoch
    warmup = min(train.warmup_steps, max(total - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train.lr_schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

