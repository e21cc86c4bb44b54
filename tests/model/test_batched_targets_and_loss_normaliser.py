"""The loss as the official GFL computes it, batch for batch: each image's targets do not depend
on the other images of its batch, and QFL is normalised by sum over images of max(pos_i, 1)."""

from __future__ import annotations

import math

import pytest
import torch

from gfldet.config import Config
from gfldet.model.atss import atss_assign
from gfldet.model.box_ops import grid_valid_mask, square_anchors
from gfldet.model.build import build_model
from gfldet.model.detector import pad_targets, positives_normaliser
from gfldet.model.losses import quality_focal_loss

pytestmark = pytest.mark.usefixtures("one_thread")

STRIDES = [8, 16, 32, 64, 128]


def tiny_model(num_classes: int = 3):
    cfg = Config()
    cfg.model.num_classes = num_classes
    vars(cfg.model.backbone).update(depth=18, base_width=8)
    cfg.model.neck.out_channels = 16
    vars(cfg.model.head).update(feat_channels=16, stacked_convs=1, num_groups=4)
    torch.manual_seed(0)
    return build_model(cfg.model)


def grid_of(pad_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Feature sizes of a padded input (a multiple of 32): P3..P7."""
    return [(-(-pad_hw[0] // s), -(-pad_hw[1] // s)) for s in STRIDES]


def edge_gts(gen: torch.Generator, h: int, w: int, n: int) -> torch.Tensor:
    """n boxes inside an h x w image, most of them touching its right or bottom edge."""
    x1 = torch.rand(n, generator=gen) * (w - 12)
    y1 = torch.rand(n, generator=gen) * (h - 12)
    x2 = torch.where(
        torch.rand(n, generator=gen) < 0.7,
        torch.full((n,), float(w)),
        (x1 + 8 + torch.rand(n, generator=gen) * (w - x1 - 8)),
    )
    y2 = torch.where(
        torch.rand(n, generator=gen) < 0.7,
        torch.full((n,), float(h)),
        (y1 + 8 + torch.rand(n, generator=gen) * (h - y1 - 8)),
    )
    return torch.stack([x1, y1, x2, y2], 1)


def target(h: int, w: int, boxes: torch.Tensor) -> dict:
    pad = (-(-h // 32) * 32, -(-w // 32) * 32)
    return {
        "img_size": (h, w),
        "pad_size": pad,
        "boxes": boxes,
        "labels": torch.zeros(len(boxes), dtype=torch.long),
    }


def per_level(assigned: torch.Tensor, sizes: list[tuple[int, int]]) -> set:
    """{(level, row, col, gt)} of the positives of one image's assignment [A]."""
    out, start = set(), 0
    for lvl, (h, w) in enumerate(sizes):
        a = assigned[start : start + h * w].view(h, w)
        out |= {(lvl, r, c, int(a[r, c])) for r, c in (a >= 0).nonzero().tolist()}
        start += h * w
    return out


def test_each_images_assignment_is_that_of_the_image_alone():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    differs_without_masking = 0
    for trial in range(10):
        small = (
            int(torch.randint(60, 200, (1,), generator=gen)),
            int(torch.randint(60, 200, (1,), generator=gen)),
        )
        big = (small[0] + 40 + trial * 8, small[1] + 72)
        targets = [target(*big, edge_gts(gen, *big, 5)), target(*small, edge_gts(gen, *small, 6))]
        batch_pad = (max(t["pad_size"][0] for t in targets), max(t["pad_size"][1] for t in targets))
        sizes = grid_of(batch_pad)
        points, strides = model.grid(sizes, torch.device("cpu"))
        assigned, valid = model.assign(points, strides, sizes, targets)
        for i, t in enumerate(targets):
            alone_sizes = grid_of(t["pad_size"])
            p1, s1 = model.grid(alone_sizes, torch.device("cpu"))
            alone, alone_valid = model.assign(p1, s1, alone_sizes, [t])
            assert alone_valid.all()
            # The same positives with the same gts...
            assert per_level(assigned[i], sizes) == per_level(alone[0], alone_sizes), trial
            # ...and exactly the locations outside the image's own grid are ignored.
            kept = per_level(torch.where(valid[i], 0, -1), sizes)
            assert kept == per_level(torch.zeros_like(alone[0]), alone_sizes), trial
        # Without the masks, the smaller image's targets would depend on the batch.
        gt_boxes, _, gt_valid = pad_targets(targets, "cpu")
        anchors = square_anchors(points, strides, 8.0)
        unmasked, _ = atss_assign(anchors, [h * w for h, w in sizes], gt_boxes, gt_valid, 9, sizes)
        differs_without_masking += not torch.equal(unmasked, assigned)
    assert differs_without_masking > 0


def test_anchors_outside_an_images_padded_size_carry_no_classification_loss():
    model = tiny_model().train()
    targets = [
        target(256, 320, torch.tensor([[10.0, 20, 200, 180], [150, 100, 320, 256]])),
        target(96, 128, torch.tensor([[60.0, 40, 128, 96]])),
    ]
    sizes = grid_of((256, 320))
    points, strides = model.grid(sizes, torch.device("cpu"))
    a = points.shape[0]
    torch.manual_seed(1)
    cls = torch.randn(2, a, 3, requires_grad=True)
    reg = torch.randn(2, a, 68, requires_grad=True)
    losses = model.losses(cls, reg, points, strides, sizes, targets)
    (grad,) = torch.autograd.grad(losses["loss_qfl"], cls)
    valid = grid_valid_mask(sizes, STRIDES, [(256, 320), (96, 128)])
    assert valid[0].all() and not valid[1].all()
    assert (grad[1][~valid[1]] == 0).all()
    assert (grad[1][valid[1]] != 0).all() and (grad[0] != 0).all()


def test_qfl_normaliser_counts_every_image_at_least_once():
    assigned = torch.full((3, 10), -1)
    assigned[0, [1, 4, 6]] = 0
    assigned[2, 2] = 1
    assert positives_normaliser(assigned).item() == 3 + 1 + 1  # the empty image counts 1
    # In the loss: QFL summed over every valid location, divided by P + 1 for an image
    # without positives in the batch.
    model = tiny_model().train()
    targets = [
        target(128, 128, torch.tensor([[10.0, 20, 100, 120], [60, 10, 128, 70]])),
        target(128, 128, torch.zeros(0, 4)),
    ]
    sizes = grid_of((128, 128))
    points, strides = model.grid(sizes, torch.device("cpu"))
    torch.manual_seed(2)
    cls = torch.randn(2, points.shape[0], 3)
    reg = torch.randn(2, points.shape[0], 68)
    batch = model.losses(cls, reg, points, strides, sizes, targets)["loss_qfl"].item()
    alone = model.losses(cls[:1], reg[:1], points, strides, sizes, targets[:1])["loss_qfl"].item()
    assigned, _ = model.assign(points, strides, sizes, targets)
    num_pos = int((assigned >= 0).sum())
    assert num_pos > 0 and (assigned[1] < 0).all()
    # Image 2 has negatives only: its QFL is that of all-zero targets.
    empty = quality_focal_loss(
        cls[1], torch.full((points.shape[0],), 3), torch.zeros(points.shape[0]), 2.0, "sum"
    ).item()
    # Summed QFL of the batch = image 1's + image 2's, over P + 1 (not over P).
    assert math.isclose(batch * (num_pos + 1), alone * num_pos + empty, rel_tol=1e-5)
