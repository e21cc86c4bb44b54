"""ATSS assignment (Zhang et al., CVPR 2020), vectorised over gts, levels and images."""

from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import aligned_box_iou

# Locations searched around a gt centre on a grid level, per axis: the topk <= 9 locations
# nearest a point (equal distances included) lie within 3 rows/columns of its nearest
# location when the grid has >= 3 rows and columns, within 5 along a grid 1 or 2 wide. Checked
# exhaustively in tests for points up to 3 steps outside the grid.
WINDOW, WINDOW_THIN = 7, 11
MAX_WINDOW_TOPK = 9


def atss_assign(
    anchors: Tensor,
    num_level_anchors: list[int],
    gt_boxes: Tensor,
    gt_valid: Tensor | None = None,
    topk: int = 9,
    level_shapes: list[tuple[int, int]] | None = None,
    anchor_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Assigns every anchor to one gt box or to background.

    anchors [A, 4] xyxy, shared by all images; num_level_anchors: anchors per pyramid level, in
    order; gt_boxes [G, 4] for one image or [B, G, 4] for a batch padded to G boxes, with
    gt_valid [B, G] marking the real ones; anchor_valid [A] or [B, A]: the anchors of each image
    that take part (those inside its own padded size, see box_ops.grid_valid_mask); the others
    are never candidates nor positives, as if the image were alone in its batch (None: all).
    Returns (assigned, ious), each [A] or [B, A]: `assigned` is the gt index within the image or
    -1 for background; `ious` is the IoU with the assigned gt (0 for background).

    The five steps: (1) IoU and centre distance of anchor-gt pairs; (2) per level and gt, the
    topk anchors closest to the gt centre are candidates (equal distances: lower anchor index
    first); (3) per gt, threshold = mean + std of the candidates' IoUs; (4) positive if
    IoU >= threshold and the anchor centre lies inside the gt; (5) an anchor positive for
    several gts takes the one of highest IoU (equal IoUs: lower gt index).

    `level_shapes` [(H, W)] per level says the anchors are the detector's grids (row-major, one
    anchor per location, evenly spaced). Step 2 then searches only a window of 7 x 7 locations
    around each gt centre instead of measuring every anchor: the same candidates for topk <= 9
    and gt centres up to 3 strides outside the grid (boxes inside the padded image are at most
    1 outside), and the nearest within the border window for centres farther out. Without it
    every anchor-gt distance is computed ([A, B*G] memory). Only the K candidates' IoUs are
    ever computed.
    """
    single = gt_boxes.dim() == 2
    if single:
        gt_boxes = gt_boxes[None]
        anchor_valid = anchor_valid[None] if anchor_valid is not None else None
    b, g = gt_boxes.shape[:2]
    dev = anchors.device
    if gt_valid is None:
        gt_valid = torch.ones(b, g, dtype=torch.bool, device=dev)
    num_anchors = anchors.shape[0]
    if g == 0 or num_anchors == 0:
        assigned = torch.full((b, num_anchors), -1, dtype=torch.long, device=dev)
        out = (assigned, anchors.new_zeros(b, num_anchors))
        return (out[0][0], out[1][0]) if single else out

    # Every gt of the batch is one column; steps 1-4 are independent per column.
    gts = gt_boxes.reshape(b * g, 4).to(anchors.dtype)
    image = torch.arange(b, device=dev).repeat_interleave(g)  # [BG]: each column's image
    col_valid = anchor_valid[image] if anchor_valid is not None else None  # [BG, A]
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centers = (gts[:, :2] + gts[:, 2:]) / 2
    if level_shapes is not None and topk <= MAX_WINDOW_TOPK:
        if [h * w for h, w in level_shapes] != list(num_level_anchors):
            raise ValueError(f"level_shapes {level_shapes} do not match {num_level_anchors}")
        cand_idx, cand_ok = _grid_candidates(centers, level_shapes, gt_centers, topk, col_valid)
    else:
        cand_idx, cand_ok = _nearest_candidates(
            centers, num_level_anchors, gt_centers, topk, col_valid
        )  # [K, BG] each

    k = cand_idx.shape[0]
    cand_ious = aligned_box_iou(anchors[cand_idx], gts)  # [K, BG]
    if cand_ok is None:
        # Unbiased std, as the reference; a single candidate has no spread.
        spread = cand_ious.std(0) if k > 1 else torch.zeros_like(cand_ious[0])
        thr = cand_ious.mean(0) + spread
    else:  # some columns have fewer candidates (their image's valid area is small)
        n = cand_ok.sum(0)
        mean = torch.where(cand_ok, cand_ious, 0.0).sum(0) / n.clamp(min=1)
        var = torch.where(cand_ok, (cand_ious - mean).square(), 0.0).sum(0) / (n - 1).clamp(min=1)
        thr = mean + var.sqrt()
    c = centers[cand_idx]  # [K, BG, 2]
    inside = torch.minimum(c - gts[:, :2], gts[:, 2:] - c).amin(-1) > 0.01
    is_pos = (cand_ious >= thr[None]) & inside & gt_valid.reshape(1, b * g)
    if cand_ok is not None:
        is_pos &= cand_ok

    # Step 5 over (image, anchor) slots. A positive's IoU is > 0 (its anchor's centre lies
    # inside the gt), so 0 means "no positive gt".
    slot = (image * num_anchors + cand_idx).reshape(-1)  # [K * BG]
    val = torch.where(is_pos, cand_ious, 0.0).reshape(-1)
    best = cand_ious.new_zeros(b * num_anchors).scatter_reduce_(0, slot, val, "amax")
    gt_index = torch.arange(g, device=dev).repeat(b).expand(k, -1).reshape(-1)
    wins = is_pos.reshape(-1) & (val == best[slot])
    # The lowest gt index among a slot's winners; the other pairs go to one spare slot at the
    # end, so slots without a winner keep -1 (include_self=False ignores that initial value).
    spare = b * num_anchors
    assigned = torch.full((spare + 1,), -1, dtype=torch.long, device=dev)
    to = torch.where(wins, slot, spare)
    assigned.scatter_reduce_(0, to, gt_index, "amin", include_self=False)
    assigned = assigned[:spare].view(b, num_anchors)
    best = best.view(b, num_anchors)
    return (assigned[0], best[0]) if single else (assigned, best)


def _nearest_candidates(
    centers: Tensor,
    num_level_anchors: list[int],
    gt_centers: Tensor,
    topk: int,
    valid: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Indices [K, G] of the topk anchors nearest each gt centre on every level, any layout,
    and, with `valid` [G, A] (the anchors each gt may take), which of them are valid anchors
    ([K, G]; a level with fewer than topk valid anchors gives fewer real candidates)."""
    # Exact differences, not cdist's matrix-product shortcut: its rounding would reorder ties.
    dist = torch.cdist(centers, gt_centers, compute_mode="donot_use_mm_for_euclid_dist")
    if valid is not None:
        dist = dist.masked_fill(~valid.t(), float("inf"))
    cand, start = [], 0
    for n in num_level_anchors:
        if n > 0:
            # A stable sort, not topk, so that equal distances keep the lower anchor index.
            near = dist[start : start + n].sort(dim=0, stable=True).indices[: min(topk, n)]
            cand.append(near + start)
        start += n
    idx = torch.cat(cand)
    return idx, (None if valid is None else dist.gather(0, idx).isfinite())


def _grid_candidates(
    centers: Tensor,
    level_shapes: list[tuple[int, int]],
    gt_centers: Tensor,
    topk: int,
    valid: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Indices [K, G] of the topk anchors nearest each gt centre on every level, searched in a
    window of locations around it; centers [A, 2] must be row-major evenly spaced grids.

    With `valid` [G, A] (each gt's image's anchors: a top-left rectangle of every level, see
    box_ops.grid_valid_mask), the window stays inside that rectangle where it fits, and the
    second result [K, G] says which candidates are valid (fewer than topk on a level whose
    rectangle holds fewer locations)."""
    dev = centers.device
    cand, ok, start = [], [], 0
    for h, w in level_shapes:
        if h * w == 0:
            continue
        # Each gt's valid rows and columns on this level (the whole grid without `valid`).
        if valid is None:  # known on the host: no device sync
            rows_ok = torch.full((len(gt_centers),), h, device=dev)
            cols_ok = torch.full((len(gt_centers),), w, device=dev)
            thin_h, thin_w = h < 3, w < 3
        else:
            level = valid[:, start : start + h * w].view(-1, h, w)
            rows_ok, cols_ok = level[:, :, 0].sum(1), level[:, 0, :].sum(1)
            thin_h, thin_w = int(rows_ok.min()) < 3, int(cols_ok.min()) < 3
        wh = min(h, WINDOW if not thin_w else WINDOW_THIN)
        ww = min(w, WINDOW if not thin_h else WINDOW_THIN)
        origin = centers[start]
        # Grid step along x and y (a 1-wide axis has no step; any positive value works there).
        step_x = centers[start + 1, 0] - origin[0] if w > 1 else origin.new_ones(())
        step_y = centers[start + w, 1] - origin[1] if h > 1 else origin.new_ones(())
        step = torch.stack([step_x, step_y])
        # Window's first (col, row): the nearest location minus half the window, kept inside
        # the valid rectangle (and the grid, where the rectangle is smaller than the window).
        half = torch.tensor([ww // 2, wh // 2], device=dev)
        first = ((gt_centers - origin) / step).round().long() - half  # [G, 2]
        col0 = torch.minimum(first[:, 0], cols_ok - ww).clamp(min=0)
        row0 = torch.minimum(first[:, 1], rows_ok - wh).clamp(min=0)
        cols = col0[:, None] + torch.arange(ww, device=dev)  # [G, ww]
        rows = row0[:, None] + torch.arange(wh, device=dev)  # [G, wh]
        # On a grid x depends on the column only and y on the row only.
        dx2 = (centers[start + cols, 0] - gt_centers[:, :1]).square()  # [G, ww]
        dy2 = (centers[start + rows * w, 1] - gt_centers[:, 1:]).square()  # [G, wh]
        d2 = (dx2[:, None, :] + dy2[:, :, None]).flatten(1)  # [G, wh * ww], row-major
        if valid is not None:
            inside = (rows < rows_ok[:, None])[:, :, None] & (cols < cols_ok[:, None])[:, None, :]
            d2 = d2.masked_fill(~inside.flatten(1), float("inf"))
        # Sort by (distance, position in the window) exactly: the bits of a float >= 0 order
        # as the float does (inf last), and the window is row-major, so position order is
        # index order.
        k = min(topk, h * w)
        if d2.dtype == torch.float32:
            pos = torch.arange(wh * ww, device=dev)
            key = d2.view(torch.int32).long() * (wh * ww) + pos
            near = key.topk(k, dim=1, largest=False).indices  # sorted
        else:  # other float widths: a stable sort gives the same order, a little slower
            near = d2.sort(dim=1, stable=True).indices[:, :k]
        idx = start + rows.gather(1, near // ww) * w + cols.gather(1, near % ww)
        cand.append(idx)
        ok.append(d2.gather(1, near).isfinite())
        start += h * w
    return torch.cat(cand, 1).t(), (None if valid is None else torch.cat(ok, 1).t())
