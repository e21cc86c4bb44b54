"""atss: the batched ATSS assignment vs a per-image loop of the same function,
Sizes.atss_images images x Sizes.atss_gts gts on the anchors of Sizes.atss_hw (checked equal
first, and equal to the all-pairs search). bench.py relates it to the training step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gfldet.config import load_config
from gfldet.model.atss import atss_assign
from gfldet.model.box_ops import grid_points, square_anchors

from ..models import RECIPE, random_boxes
from ..timing import measure, median
from . import Settings


def feature_sizes(hw: tuple[int, int], strides: list[int]) -> list[tuple[int, int]]:
    """P3..P5 at H/s (the input a multiple of 32); P6, P7 by gfldet's FPN's stride-2 3x3 convs
    (padding 1) on the level before."""
    sizes = [(-(-hw[0] // s), -(-hw[1] // s)) for s in strides[:3]]
    for _ in strides[3:]:
        sizes.append(((sizes[-1][0] - 1) // 2 + 1, (sizes[-1][1] - 1) // 2 + 1))
    return sizes


def run(s: Settings, out: dict[str, Any]) -> None:
    sz = s.sizes
    model_cfg = load_config(RECIPE, ["model.num_classes=80"]).model
    n = 3 + model_cfg.neck.extra_levels  # the recipe's P3..P7
    strides, topk = [8 * 2**i for i in range(n)], model_cfg.assigner.topk
    sizes = feature_sizes(sz.atss_hw, strides)
    points, point_strides = grid_points(sizes, strides)
    anchors = square_anchors(points, point_strides, model_cfg.assigner.anchor_scale)
    num_level = [h * w for h, w in sizes]
    gen = torch.Generator().manual_seed(2)
    gts = random_boxes(gen, (sz.atss_images, sz.atss_gts), sz.atss_hw)
    valid = torch.ones(gts.shape[:2], dtype=torch.bool)

    # As the detector calls it: the grid shapes let candidates be searched near each gt.
    def batched() -> Tensor:
        return atss_assign(anchors, num_level, gts, valid, topk, sizes)[0]

    def loop() -> list[Tensor]:
        return [atss_assign(anchors, num_level, g, None, topk, sizes)[0] for g in gts]

    # For reference: every anchor-gt distance measured (any anchor layout).
    def batched_all_pairs() -> Tensor:
        return atss_assign(anchors, num_level, gts, valid, topk)[0]

    if not all(torch.equal(x, y) for x, y in zip(batched(), loop())):
        raise RuntimeError("atss: the batched and per-image assignments differ")
    if not torch.equal(batched(), batched_all_pairs()):
        raise RuntimeError("atss: the grid search and the all-pairs search differ")
    fns = {"batched": batched, "loop": loop, "batched_all_pairs": batched_all_pairs}
    # Milliseconds each, so more repeats cost little and steady the median.
    times = measure(fns, max(s.repeats, 15), s.warmup)
    m = {k: median(v) for k, v in times.items()}
    out["times"]["atss"] = times
    out["medians"]["atss"] = m
    out["atss_speedup"] = m["loop"] / m["batched"]
    out["atss_anchors"] = int(anchors.shape[0])


def report(out: dict[str, Any]) -> list[str]:
    sz = out["settings"]["sizes"]
    h, w = sz["atss_hw"]
    m = out["medians"]["atss"]
    return [
        f"\nATSS, {sz['atss_images']} images x {sz['atss_gts']} gts, {h}x{w} "
        f"({out['atss_anchors']} anchors): batched {m['batched'] * 1e3:.1f} ms, per-image "
        f"loop {m['loop'] * 1e3:.1f} ms (all-pairs search, batched: "
        f"{m['batched_all_pairs'] * 1e3:.1f} ms)",
    ]
