"""train: one training step (forward, targets, loss, backward, SGD step) of gfldet's R-50 GFL,
Sizes.train_images images of Sizes.train_hw with Sizes.train_boxes boxes each, vs torchvision's
FCOS (as torchvision trains it from random weights, and with gfldet's frozen recipe)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from gfldet.config import load_config
from gfldet.training.optim import build_optimizer

from ..models import (
    RECIPE,
    build_fcos,
    build_fcos_same_recipe,
    build_gfl_r50,
    input_size_check,
    layout,
    random_boxes,
    train_step,
)
from ..timing import measure, median
from . import Settings


def run(s: Settings, out: dict[str, Any]) -> None:
    h, w = s.sizes.train_hw
    b, n = s.sizes.train_images, s.sizes.train_boxes
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    boxes = random_boxes(gen, (b, n), (h, w))
    labels = torch.randint(0, 80, (b, n), generator=gen)
    targets = [{"boxes": boxes[i], "labels": labels[i], "img_size": (h, w)} for i in range(b)]
    peer_in = [im.float() / 255 for im in images]
    peer_targets = [{"boxes": boxes[i], "labels": labels[i] + 1} for i in range(b)]
    sgd = load_config(RECIPE, ["model.num_classes=80"]).train  # SGD, momentum, decay

    models = {
        "gfldet": build_gfl_r50().train(),
        "fcos": build_fcos((h, w)).train(),
        "fcos_same_recipe": build_fcos_same_recipe((h, w)).train(),
    }
    opts = {k: build_optimizer(m, sgd, 0.01) for k, m in models.items()}
    inputs = {
        "gfldet": (images, targets),
        "fcos": (peer_in, peer_targets),
        "fcos_same_recipe": (peer_in, peer_targets),
    }
    losses: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        def run_step() -> None:
            losses[name] = train_step(models[name], opts[name], *inputs[name])

        return run_step

    with contextlib.ExitStack() as stack:
        for name in ("fcos", "fcos_same_recipe"):
            stack.enter_context(input_size_check(models[name], (b, 3, h, w), name))
        times = measure({k: step(k) for k in models}, s.repeats, s.warmup)
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"train: non-finite loss for {bad}: the timing would be moot")
    m = {k: median(v) for k, v in times.items()}
    out["times"]["train"] = times
    out["medians"]["train"] = m
    out["train_ratio_fcos"] = m["gfldet"] / m["fcos"]
    out["train_ratio_fcos_same_recipe"] = m["gfldet"] / m["fcos_same_recipe"]
    out["train_gfldet_layout"] = layout(models["gfldet"])


def report(out: dict[str, Any]) -> list[str]:
    sz = out["settings"]["sizes"]
    h, w = sz["train_hw"]
    m = out["medians"]["train"]
    return [
        f"\ntraining step, {sz['train_images']} images {h}x{w}, {sz['train_boxes']} boxes "
        "each, SGD step included (s):",
        f"  gfldet R-50 GFL (stem + stage 1 frozen, BN frozen)   {m['gfldet']:8.3f}"
        f"  ({out['train_gfldet_layout']}, as built)",
        f"  torchvision FCOS R-50 (random weights: all trainable) {m['fcos']:7.3f}",
        f"  torchvision FCOS R-50, gfldet's recipe (frozen)      {m['fcos_same_recipe']:8.3f}",
    ]
