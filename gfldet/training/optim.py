"""The optimizer and the learning-rate schedule of training."""

from __future__ import annotations

import torch
from torch import nn

from .options import TrainOptions


def lr_at(t: TrainOptions, base_lr: float, epoch: int, it: int) -> float:
    """Step decay by epoch with a linear warm-up over the first iterations (global iter `it`)."""
    lr = base_lr * t.lr_gamma ** sum(epoch >= s for s in t.lr_steps)
    if it < t.warmup_iters:
        lr *= 1 - (1 - it / t.warmup_iters) * (1 - t.warmup_ratio)
    return lr


def build_optimizer(model: nn.Module, t: TrainOptions, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the official recipe) or AdamW, over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {t.optimizer!r}")
