"""The optimizer, the learning-rate schedule and the EMA of the weights during training."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .options import TrainOptions


def lr_at(
    t: TrainOptions, base_lr: float, epoch: int, it: int, total_iters: int | None = None
) -> float:
    """The learning rate of the iteration after `it` completed ones (all epochs together), in
    epoch `epoch` (0-based).

    train.lr_schedule "step": base_lr x lr_gamma per epoch of lr_steps reached. "cosine": from
    base_lr at the end of the warm-up down to min_lr_ratio x base_lr at `total_iters` (the
    run's iterations: epochs x batches per epoch, needed then), half a cosine wave, per
    iteration. Both start with a linear warm-up from warmup_ratio x lr over warmup_iters.
    """
    if t.lr_schedule == "cosine":
        if total_iters is None:
            raise ValueError("lr_at: train.lr_schedule cosine needs the run's total_iters")
        done = min(max(it - t.warmup_iters, 0) / max(total_iters - t.warmup_iters, 1), 1.0)
        lr = base_lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * (1 + math.cos(math.pi * done)) / 2)
    else:
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


# The optimizer settings a param group takes from the config, by their param-group names.
CONFIG_KEYS = {"momentum": "train.momentum", "weight_decay": "train.weight_decay"}


def reapply_settings(
    optimizer: torch.optim.Optimizer, fresh: list[dict]
) -> dict[str, tuple[object, object]]:
    """After `optimizer.load_state_dict` (a resume): puts back the settings of `fresh` (the
    param groups as the config built them, before loading) wherever the restored groups
    differ, so that the run does what its config (and config.yaml) says; the learning rate
    is left alone (the schedule sets it every step). The optimizer's state (momentum buffers,
    AdamW's moments) stays the checkpoint's.

    Returns {name: (restored value, config value)} of what changed, names as the config's
    (train.weight_decay) where it has one.
    """
    changed: dict[str, tuple[object, object]] = {}
    for group, new in zip(optimizer.param_groups, fresh):
        for k, v in new.items():
            if k in ("params", "lr", "initial_lr") or group.get(k) == v:
                continue
            changed.setdefault(CONFIG_KEYS.get(k, k), (group.get(k), v))
            group[k] = v
    return changed


EmaFn = Callable[[list[Tensor], list[Tensor], Tensor], None]


def ema_avg_fn(decay: float, ramp_iters: int = 0) -> EmaFn:
    """The EMA update of `AveragedModel(multi_avg_fn=...)`: ema = d·ema + (1−d)·weights.

    ramp_iters 0: d = decay at every update (torch's EMA). Else the decay ramps up, as YOLOX
    and YOLOv8 do, d = decay·(1 − exp(−n / ramp_iters)) at update n (the first update copies
    the weights): early averages follow the fast-changing weights instead of lagging far
    behind them, which matters most in short runs.
    """
    if not ramp_iters:
        return get_ema_multi_avg_fn(decay)

    def update(ema: list[Tensor], weights: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged) + 1  # num_averaged counts the updates before this one
        get_ema_multi_avg_fn(decay * (1 - math.exp(-n / ramp_iters)))(ema, weights, num_averaged)

    return update
