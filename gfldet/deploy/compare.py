"""Whether two runs of a detector found the same objects: the reference's confident detections
matched one to one, by class and IoU, in the other's. Used to check an int8 model against its
fp32 one, and a runtime against PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

SCORE_THR = 0.3  # reference detections that count: the confident ones a user would draw
IOU_THR = 0.5  # the overlap that makes a match (COCO's AP50 criterion)


def match_detections(
    ref: dict, other: dict, score_thr: float = SCORE_THR, iou_thr: float = IOU_THR
) -> tuple[int, int]:
    """(matched, counted) for one image: the reference detections scoring >= score_thr
    (counted), and how many of them have their own detection of the same label in `other`
    with IoU >= iou_thr (greedy, highest reference score first; any score in `other`)."""
    keep = ref["scores"] >= score_thr
    rb, rl = ref["boxes"][keep].float(), ref["labels"][keep]
    order = ref["scores"][keep].argsort(descending=True)
    ob, ol = other["boxes"].float(), other["labels"]
    if not len(rb):
        return 0, 0
    if not len(ob):
        return 0, len(rb)
    iou = box_iou(rb, ob)
    iou[rl[:, None] != ol[None, :]] = 0
    taken = torch.zeros(len(ob), dtype=torch.bool)
    matched = 0
    for i in order.tolist():
        candidates = iou[i].masked_fill(taken, 0)
        j = int(candidates.argmax())
        if candidates[j] >= iou_thr:
            taken[j] = True
            matched += 1
    return matched, len(rb)


def detection_agreement(
    ref: Sequence[dict],
    other: Sequence[dict],
    score_thr: float = SCORE_THR,
    iou_thr: float = IOU_THR,
) -> tuple[int, int]:
    """match_detections summed over images: (matched, counted)."""
    matched = counted = 0
    for a, b in zip(ref, other, strict=True):
        m, c = match_detections(a, b, score_thr, iou_thr)
        matched, counted = matched + m, counted + c
    return matched, counted
