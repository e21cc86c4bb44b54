"""Box and grid utilities shared by the head, the assigner, the losses and post-processing.

Boxes are xyxy. Edge distances are (left, top, right, bottom) from a point to a box's sides.
"""

from __future__ import annotations

import torch
from torch import Tensor


def distance2bbox(points: Tensor, distances: Tensor, max_shape: Tensor | None = None) -> Tensor:
    """Decodes edge distances into boxes.

    points [..., 2] (x, y); distances [..., 4] (l, t, r, b); max_shape [..., 2] (h, w) to clip to,
    broadcastable against points. Returns boxes [..., 4] xyxy.
    """
    x1y1 = points - distances[..., :2]
    x2y2 = points + distances[..., 2:]
    boxes = torch.cat([x1y1, x2y2], dim=-1)
    if max_shape is not None:
        wh = max_shape.flip(-1).to(boxes.dtype)  # (h, w) -> (w, h)
        upper = torch.cat([wh, wh], dim=-1)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
    return boxes


def bbox2distance(points: Tensor, boxes: Tensor, max_dis: float | None = None) -> Tensor:
    """Edge distances from points [..., 2] to boxes [..., 4] clamped to [0, max_dis]: [..., 4]."""
    d = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    return d.clamp(min=0, max=max_dis) if max_dis is not None else d.clamp(min=0)


def centerness(points: Tensor, boxes: Tensor, eps: float = 1e-12) -> Tensor:
    """FCOS centerness of points [..., 2] inside boxes [..., 4]: [...] in [0, 1], 1 at the centre.

    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) with (l, t, r, b) = bbox2distance.
    """
    d = bbox2distance(points, boxes)
    lr, tb = d[..., 0::2], d[..., 1::2]
    ratio = (lr.amin(-1) / lr.amax(-1).clamp(min=eps)) * (tb.amin(-1) / tb.amax(-1).clamp(min=eps))
    return ratio.sqrt()


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of each box in a [N, 4] with the box at the same index in b [N, 4] -> [N]
    (any shapes [..., 4] that broadcast)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)
    return inter / (area_a + area_b - inter).clamp(min=eps)


def grid_points(
    feat_sizes: list[tuple[int, int]], strides: list[int], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """The location grid of every pyramid level, concatenated in head output order.

    Location (i, j) of a level with stride s is the point (j*s, i*s) (MMDetection v2's
    convention, which the official GFL weights were trained with).
    Returns points [A, 2] (x, y) float32 and their strides [A] float32, A = sum of H*W.
    """
    points, point_strides = [], []
    for (h, w), s in zip(feat_sizes, strides):
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32) * s,
            torch.arange(w, device=device, dtype=torch.float32) * s,
            indexing="ij",
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))
        point_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(point_strides)


def grid_limits(
    feat_sizes: list[tuple[int, int]], strides: list[int], pad_sizes: list[tuple[int, int]]
) -> list[list[tuple[int, int]]]:
    """Per level, per image: the (rows, cols) of the level's grid that lie inside the image's
    own padded size (h, w), i.e. the top-left min(ceil(h / s), H) x min(ceil(w / s), W)
    locations of a level of stride s and size (H, W): MMDetection's
    AnchorGenerator.valid_flags with the image's pad_shape. Plain ints, so that callers can
    decide on the host (no device sync) whether any location is padding of the batch only."""
    return [
        [(min(-(-ph // s), h), min(-(-pw // s), w)) for ph, pw in pad_sizes]
        for (h, w), s in zip(feat_sizes, strides)
    ]


def grid_valid_mask(
    feat_sizes: list[tuple[int, int]],
    strides: list[int],
    pad_sizes: list[tuple[int, int]],
    device: torch.device | str = "cpu",
) -> Tensor:
    """Which locations of the batch's grids lie inside each image's own padded size (see
    grid_limits); the rest is padding of the batch, not of the image.
    Returns valid [B, A] bool, A = sum of H*W, locations in grid_points order.
    """
    limits = torch.tensor(grid_limits(feat_sizes, strides, pad_sizes), device=device)  # [L, B, 2]
    masks = []
    for (h, w), lim in zip(feat_sizes, limits):
        rows = torch.arange(h, device=device)[None, :, None] < lim[:, 0, None, None]
        cols = torch.arange(w, device=device)[None, None, :] < lim[:, 1, None, None]
        masks.append((rows & cols).flatten(1))
    return torch.cat(masks, 1)


def square_anchors(points: Tensor, strides: Tensor, scale: float) -> Tensor:
    """One square anchor of side scale*stride centred on each point: [A, 2], [A] -> [A, 4]."""
    half = (strides * scale / 2)[:, None]
    return torch.cat([points - half, points + half], dim=-1)
