"""The cosine learning-rate schedule and the EMA whose decay ramps up (train.lr_schedule,
train.ema_ramp_iters); the defaults keep the step schedule and the constant decay."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gfldet.core.checkpoint import load_checkpoint
from gfldet.training.optim import lr_at
from gfldet.training.options import TrainOptions
from gfldet.training.trainer import Trainer, unwrap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cosine_schedule_after_the_warm_up():
    t = dataclasses.replace(
        TrainOptions(), lr_schedule="cosine", warmup_iters=10, warmup_ratio=0.1, min_lr_ratio=0.05
    )
    total = 110
    assert lr_at(t, 1.0, 0, 0, total) == pytest.approx(0.1)  # the warm-up as with "step"
    assert lr_at(t, 1.0, 0, 5, total) == lr_at(
        dataclasses.replace(t, lr_schedule="step"), 1.0, 0, 5
    )
    assert lr_at(t, 1.0, 0, 10, total) == pytest.approx(1.0)
    assert lr_at(t, 1.0, 3, 60, total) == pytest.approx((1 + 0.05) / 2)  # half-way
    assert lr_at(t, 1.0, 9, 110, total) == pytest.approx(0.05)
    assert lr_at(t, 1.0, 9, 200, total) == pytest.approx(0.05)  # never below
    lrs = [lr_at(t, 2.0, 0, i, total) for i in range(10, 111)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # per iteration, not per epoch
    with pytest.raises(ValueError, match="total_iters"):
        lr_at(t, 1.0, 0, 20)


@pytest.mark.slow
def test_training_follows_the_cosine_schedule(tiny_cfg, log_records, tmp_path):
    work = tmp_path / "w"
    cfg = tiny_cfg(work, "train.epochs=2", "train.lr_schedule=cosine", "train.min_lr_ratio=0.1")
    trainer = Trainer(cfg)
    trainer.fit()
    lrs = [r["lr"] for r in log_records(work) if "loss" in r]
    assert len(lrs) == 8  # 2 epochs of 4 batches
    expected = [lr_at(cfg.train, trainer.base_lr, i // 4, i, 8) for i in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] < 0.2 * trainer.base_lr and lrs[2] == pytest.approx(trainer.base_lr)


@pytest.mark.slow
def test_ema_decay_ramps_up(tiny_cfg, tmp_path):
    decay, ramp = 0.9, 2
    cfg = tiny_cfg(
        tmp_path / "w",
        "train.ema=true",
        f"train.ema_decay={decay}",
        f"train.ema_ramp_iters={ramp}",
        "train.max_iters=3",
    )
    seen: list[dict] = []

    class Recording(Trainer):
        def train_step(self, *args):
            out = super().train_step(*args)
            seen.append({k: v.clone() for k, v in unwrap(self.model).state_dict().items()})
            return out

    Recording(cfg).fit()
    state = load_checkpoint(tmp_path / "w" / "latest.pth")
    assert state["ema_updates"] == 3
    name = "head.gfl_cls.weight"
    ema = seen[0][name]  # the first update copies the weights
    for n in (2, 3):
        d = decay * (1 - math.exp(-n / ramp))
        ema = d * ema + (1 - d) * seen[n - 1][name]
    torch.testing.assert_close(state["ema"][name], ema)
