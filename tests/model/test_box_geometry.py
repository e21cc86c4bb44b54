"""gfldet.model.box_ops and the Integral: grid points, distance <-> box conversion, aligned IoU
and the expectation over the bins."""

from __future__ import annotations

import pytest
import torch

from gfldet.model.box_ops import aligned_box_iou, bbox2distance, distance2bbox, grid_points
from gfldet.model.representations import Integral

pytestmark = pytest.mark.usefixtures("one_thread")


def test_integral_is_the_expectation_over_the_bins():
    integral = Integral(16)
    uniform = torch.zeros(3, 4 * 17)
    torch.testing.assert_close(integral(uniform), torch.full((3, 4), 8.0))
    logits = torch.zeros(2, 4, 17)
    for e, b in enumerate([0, 3, 16, 7]):
        logits[0, e, b] = 50.0
    logits[1, :, 5] = 50.0
    out = integral(logits.flatten(1))
    torch.testing.assert_close(
        out, torch.tensor([[0.0, 3, 16, 7], [5.0, 5, 5, 5]]), atol=1e-4, rtol=0
    )
    # half/half between two bins gives their midpoint
    two = torch.full((1, 4, 17), -50.0)
    two[..., 2] = two[..., 3] = 0.0
    torch.testing.assert_close(integral(two.flatten(1)), torch.full((1, 4), 2.5))


def test_grid_points_order_and_values():
    points, strides = grid_points([(2, 3), (1, 2)], [8, 16])
    expect = [(0, 0), (8, 0), (16, 0), (0, 8), (8, 8), (16, 8), (0, 0), (16, 0)]
    assert points.tolist() == [[float(x), float(y)] for x, y in expect]
    assert strides.tolist() == [8.0] * 6 + [16.0] * 2
    assert points.dtype == strides.dtype == torch.float32


def test_distance_box_round_trip_and_clipping():
    torch.manual_seed(0)
    pts = torch.rand(20, 2) * 100
    dist = torch.rand(20, 4) * 30
    boxes = distance2bbox(pts, dist)
    torch.testing.assert_close(boxes[:, :2], pts - dist[:, :2])
    torch.testing.assert_close(boxes[:, 2:], pts + dist[:, 2:])
    torch.testing.assert_close(bbox2distance(pts, boxes), dist, atol=1e-4, rtol=0)
    # clamping of the distances
    d = bbox2distance(torch.tensor([[10.0, 10]]), torch.tensor([[12.0, 0, 40, 11]]), 15.9)
    assert d.tolist() == [[0.0, 10.0, 15.899999618530273, 1.0]]
    # clipping to (h, w) = (50, 80): x to [0, 80], y to [0, 50]
    clipped = distance2bbox(
        torch.tensor([[5.0, 5], [70, 45]]),
        torch.tensor([[10.0, 10, 10, 10], [10, 10, 20, 20]]),
        max_shape=torch.tensor([50, 80]),
    )
    assert clipped.tolist() == [[0.0, 0.0, 15.0, 15.0], [60.0, 35.0, 80.0, 50.0]]
    # a batch with one (h, w) per image
    pts2 = torch.tensor([[[30.0, 30]], [[30.0, 30]]])
    d2 = torch.full((2, 1, 4), 25.0)
    out = distance2bbox(pts2, d2, max_shape=torch.tensor([[[40, 50]], [[100, 20]]]))
    assert out.tolist() == [[[5.0, 5.0, 50.0, 40.0]], [[5.0, 5.0, 20.0, 55.0]]]


def test_aligned_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4], [0, 0, 0, 0]])
    b = torch.tensor(
        [[5.0, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 3, 3], [0, 0, 0, 0]]
    )
    iou = aligned_box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([25 / 175, 1.0, 0.0, 4 / 16, 0.0]))
