"""Training for a wall-clock budget: gfldet's Trainer stopped once the budget is spent, and
optionally a learning rate that follows the budget rather than the epochs (what a comparison
at equal time needs: each contender gets the same schedule over the same seconds)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from torch import Tensor

from gfldet.training.optim import lr_at
from gfldet.training.trainer import Trainer


class Budget:
    """A wall-clock budget of `seconds`, counted from `start()` (or the first `lr` call), and
    the learning rate at each point of it: the config's linear warm-up over
    train.warmup_iters iterations, then the base lr, times train.lr_gamma for the last
    (1 - decay_at) of the budget."""

    def __init__(self, seconds: float, decay_at: float = 1.0) -> None:
        self.seconds, self.decay_at = seconds, decay_at
        self.start_time: float | None = None

    def start(self) -> None:
        """Starts the clock (a no-op once it runs)."""
        if self.start_time is None:
            self.start_time = time.perf_counter()

    def elapsed(self) -> float:
        return 0.0 if self.start_time is None else time.perf_counter() - self.start_time

    def spent(self) -> bool:
        return self.elapsed() >= self.seconds

    def lr(self, train: Any, base_lr: float, it: int) -> float:
        """The learning rate of iteration `it` (train: the config's train section)."""
        self.start()
        warm = lr_at(dataclasses.replace(train, lr_steps=[]), base_lr, 0, it)
        decayed = self.elapsed() >= self.decay_at * self.seconds
        return warm * (train.lr_gamma if decayed else 1.0)


class BudgetTrainer(Trainer):
    """gfldet's Trainer, also stopped after the step in which `budget` is spent (one step at
    least), the way train.max_iters stops it: the partial epoch is saved and evaluated as the
    last one. With `schedule`, every step's lr is `budget.lr` instead of the epoch schedule's
    (the trainer's log.jsonl still records the epoch schedule's lr). The budget's clock starts
    at the first step unless the caller started it before."""

    def __init__(self, cfg: Any, budget: Budget, schedule: bool = False) -> None:
        super().__init__(cfg)
        self.budget, self.schedule = budget, schedule

    def train_step(self, images: Tensor, targets: list[dict], lr: float) -> dict[str, float]:
        self.budget.start()
        if self.schedule:
            lr = self.budget.lr(self.cfg.train, self.base_lr, self.iter)
        losses = super().train_step(images, targets, lr)
        if self.budget.spent():
            self.cfg.train.max_iters = self.iter + 1  # counts this step; stops after it
        return losses
