"""ATSS assignment (Zhang et al., CVPR 2020), vectorised over gts, levels and images."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

INF = float("inf")


def atss_assign(
    anchors: Tensor,
    num_level_anchors: list[int],
    gt_boxes: Tensor,
    gt_valid: Tensor | None = None,
    topk: int = 9,
) -> tuple[Tensor, Tensor]:
    """Assigns every anchor to one gt box or to background.

    anchors [A, 4] xyxy, shared by all images; num_level_anchors: anchors per pyramid level, in
    order; gt_boxes [G, 4] for one image or [B, G, 4] for a batch padded to G boxes, with
    gt_valid [B, G] marking the real ones.
    Returns (assigned, ious), each [A] or [B, A]: `assigned` is the gt index within the image or
    -1 for background; `ious` is the IoU with the assigned gt (0 for background).

    The five steps: (1) IoU and centre distance of every anchor-gt pair; (2) per level and gt,
    the topk anchors closest to the gt centre are candidates; (3) per gt, threshold = mean + std
    of the candidates' IoUs; (4) positive if IoU >= threshold and the anchor centre lies inside
    the gt; (5) an anchor positive for several gts takes the one of highest IoU.
    """
    single = gt_boxes.dim() == 2
    if single:
        gt_boxes = gt_boxes[None]
    b, g = gt_boxes.shape[:2]
    if gt_valid is None:
        gt_valid = torch.ones(b, g, dtype=torch.bool, device=gt_boxes.device)
    num_anchors = anchors.shape[0]
    if g == 0 or num_anchors == 0:
        assigned = torch.full((b, num_anchors), -1, dtype=torch.long, device=anchors.device)
        out = (assigned, anchors.new_zeros(b, num_anchors))
        return (out[0][0], out[1][0]) if single else out

    # Every gt of the batch is one column; steps 1-4 are independent per column.
    gts = gt_boxes.reshape(b * g, 4).to(anchors.dtype)
    ious = box_iou(anchors, gts)  # [A, BG]
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centers = (gts[:, :2] + gts[:, 2:]) / 2
    dist = torch.cdist(centers, gt_centers)  # [A, BG]

    cand = []
    start = 0
    for n in num_level_anchors:
        k = min(topk, n)
        if k > 0:
            cand.append(dist[start : start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    cand_idx = torch.cat(cand)  # [K, BG]
    cand_ious = ious.gather(0, cand_idx)
    # Unbiased std, as the reference; a single candidate has no spread.
    spread = cand_ious.std(0) if cand_idx.shape[0] > 1 else torch.zeros_like(cand_ious[0])
    thr = cand_ious.mean(0) + spread

    c = centers[cand_idx]  # [K, BG, 2]
    inside = torch.cat([c - gts[None, :, :2], gts[None, :, 2:] - c], dim=-1).amin(-1) > 0.01
    is_pos = (cand_ious >= thr[None]) & inside & gt_valid.reshape(1, b * g)

    # Non-positive pairs get -inf so that the max over gts picks a positive gt, if any.
    overlaps = torch.full_like(ious, -INF)
    overlaps.scatter_(0, cand_idx, torch.where(is_pos, cand_ious, cand_ious.new_tensor(-INF)))
    best, assigned = overlaps.view(num_anchors, b, g).max(dim=2)  # [A, B]
    assigned = torch.where(best > -INF, assigned, assigned.new_tensor(-1)).t()
    best = torch.where(best > -INF, best, best.new_zeros(())).t()
    return (assigned[0], best[0]) if single else (assigned.contiguous(), best.contiguous())
