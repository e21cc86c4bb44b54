"""The training options: every `train.*` config key, its default, type and allowed values
(see docs/configs.md). Pure Python (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import option

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainOptions:
    epochs: int = option(12, ge=1)
    # sgd (the paper's) | adamw (converges faster from scratch)
    optimizer: str = option("sgd", choices=OPTIMIZERS)
    lr: float = option(0.01, gt=0)  # for base_batch_size; scaled linearly to the actual batch
    base_batch_size: int = option(16, ge=1)
    momentum: float = option(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = option(0.0001, ge=0)
    warmup_iters: int = option(500, ge=0)
    warmup_ratio: float = option(0.001, ge=0, le=1)
    lr_steps: list[int] = option([8, 11], ge=0)  # epochs after which lr is multiplied by lr_gamma
    lr_gamma: float = option(0.1, gt=0)
    max_iters: int | None = option(None, ge=1)  # stop early after this many iterations
    eval_interval: int = option(1, ge=0)  # epochs; 0 disables evaluation during training
    checkpoint_interval: int = option(1, ge=1)  # epochs
    log_interval: int = option(20, ge=1)  # iterations
    grad_clip: float | None = option(None, ge=0)  # max grad norm, or null
    amp: bool = option(False)  # CUDA: fp16 autocast + GradScaler; CPU: bf16 autocast
    ema: bool = option(False)  # keep an exponential moving average of the weights
    ema_decay: float = option(0.9998, ge=0, lt=1)
    sync_bn: bool = option(False)  # SyncBatchNorm across ranks (only with trainable BN)
    checkpoint_interval_iters: int = option(0, ge=0)  # also save latest.pth every N iterations
    keep_last: int = option(0, ge=0)  # keep only the last N epoch_*.pth of the run; 0: all
    deterministic: bool = option(False)  # deterministic algorithms (bitwise resume on CPU)
    tensorboard: bool = option(False)  # also log to WORK_DIR/tensorboard (needs tensorboard)
