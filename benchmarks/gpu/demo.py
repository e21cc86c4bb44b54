"""demo: the shapes demo (`make demo`'s config and data) trained on the device with
train.amp=true for its own schedule or Sizes.demo_seconds, whichever ends first, then its val
AP (the trainer's evaluation at the end of the run)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from gfldet.data.synth import write_shapes_dataset

from ..budget import Budget, BudgetTrainer
from ..models import ensure_shapes, shapes_config
from . import Sizes
from .device import free_memory


def run(sz: Sizes, device: torch.device, res: dict, tmp: Path, data: Path) -> None:
    """The demo config, on the device with AMP, trained then evaluated on its val split."""
    if sz.demo_data is not None:
        data = tmp / "shapes"
        write_shapes_dataset(data, **sz.demo_data)
    else:
        ensure_shapes(data, workers=max(1, min(8, os.cpu_count() or 1)))
    sets = [f"device={device.type}", "train.amp=true", f"work_dir={tmp / 'demo'}", *sz.demo_set]
    cfg = shapes_config(data, tuple(sets))
    cap = cfg.train.max_iters
    start = time.perf_counter()
    try:
        budget = Budget(sz.demo_seconds)
        trainer = BudgetTrainer(cfg, budget)
        budget.start()
        ready = time.perf_counter()
        planned = cfg.train.epochs * len(trainer.train_loader)
        metrics = trainer.fit()
    finally:
        # The run's log handlers write into a temporary folder: close them with it.
        log = logging.getLogger("gfldet")
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)
    records = [json.loads(x) for x in (trainer.work_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    res.update(
        data=str(data),
        images=len(trainer.train_set),
        epochs=trainer.epoch,
        iterations=trainer.iter,
        planned_iterations=planned,
        budget_s=sz.demo_seconds,
        stopped_by_budget=trainer.iter < min(planned, cap or planned),
        setup_s=ready - start,
        train_and_eval_s=time.perf_counter() - ready,
        AP=metrics.get("AP"),
        AP50=metrics.get("AP50"),
        AP75=metrics.get("AP75"),
        loss_first=losses[0] if losses else None,
        loss_last=losses[-1] if losses else None,
        all_finite=bool(losses) and all(map(math.isfinite, losses)),
    )
    del trainer
    free_memory(device)
    ap = res["AP"]
    if not (isinstance(ap, float) and math.isfinite(ap)):
        raise RuntimeError(f"demo: no AP from the evaluation (metrics: {metrics})")


def report(demo: dict[str, Any]) -> list[str]:
    """The demo's AP and iterations (nothing without an AP)."""
    if "AP" not in demo:
        return []
    return [
        f"\ndemo (shapes, AMP): AP {demo['AP']:.3f} after {demo['iterations']} "
        f"iterations, {demo['epochs']} epoch(s), {demo['train_and_eval_s']:.0f} s "
        f"training + evaluation (budget {demo['budget_s']:g} s, stopped by it: "
        f"{demo['stopped_by_budget']})"
    ]
