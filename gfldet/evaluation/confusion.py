"""A detection confusion matrix: which class each ground-truth box was detected as, the boxes
missed, and the detections of nothing (false positives).

Rows are the ground truth's class, columns the detection's; the last row and column are
"background": row background = detections that match no box (false positives), column
background = boxes that no detection matches (missed). A detection counts when its score is at
least the drawing threshold (gfldet.core.draw.DRAW_SCORE_THR, what `gfldet infer` draws), and
matches a box at IoU >= 0.5. Matching is done per image in two rounds, detections by decreasing
score: first each detection takes the best still-free box of its own class (COCO's matching at
IoU 0.5, so the diagonal holds the true positives), then each detection left takes the best
still-free box of any other class (a confusion). Crowd boxes (iscrowd) are not counted; a
detection left over that covers a crowd region is ignored, as COCO does.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..core.draw import DRAW_SCORE_THR
from ..core.files import atomic_open

CONFUSION_IOU = 0.5
MAX_CLASSES_IN_METRICS = 30  # larger matrices are only written as CSV and PNG


def _match_image(
    gt_boxes: np.ndarray,
    gt_cls: np.ndarray,
    crowd: np.ndarray,
    det_boxes: np.ndarray,
    det_cls: np.ndarray,
    iou_thr: float,
    background: int,
) -> list[tuple[int, int]]:
    """(true class, predicted class) of every gt and counted detection of one image; boxes are
    xywh, gts [G] with crowd [G] flags, detections [D] in decreasing score order."""
    from pycocotools import mask as mask_utils

    pairs: list[tuple[int, int]] = []
    num_gt, num_det = len(gt_boxes), len(det_boxes)
    if num_gt and num_det:
        # Crowd columns: intersection over the detection's area, as COCOeval does.
        iou = np.asarray(mask_utils.iou(det_boxes.tolist(), gt_boxes.tolist(), crowd.tolist()))
        iou = iou.reshape(num_det, num_gt)
    else:
        iou = np.zeros((num_det, num_gt))
    crowd = crowd.astype(bool)
    gt_free = ~crowd
    det_left = np.ones(num_det, dtype=bool)
    hit = iou >= iou_thr
    same = det_cls[:, None] == gt_cls[None, :]
    for candidates in (hit & same, hit & ~same):
        # Detections without any candidate box (most of them) need no loop.
        for d in np.flatnonzero(det_left & candidates.any(axis=1)):
            ok = gt_free & candidates[d]
            if ok.any():
                g = int(np.argmax(np.where(ok, iou[d], -1.0)))
                gt_free[g], det_left[d] = False, False
                pairs.append((int(gt_cls[g]), int(det_cls[d])))
    covers_crowd = (iou[:, crowd] >= iou_thr).any(axis=1)
    pairs += [(background, int(det_cls[d])) for d in np.flatnonzero(det_left & ~covers_crowd)]
    pairs += [(int(gt_cls[g]), background) for g in np.flatnonzero(gt_free)]
    return pairs


def confusion_matrix(
    coco_gt: Any,
    results: list[dict],
    cat_ids: list[int],
    img_ids: list[int] | None = None,
    score_thr: float = DRAW_SCORE_THR,
    iou_thr: float = CONFUSION_IOU,
) -> np.ndarray:
    """The detection confusion matrix [C + 1, C + 1] (int64) of COCO results on `coco_gt`'s
    images (or `img_ids`): rows the true class, columns the predicted class, in `cat_ids`
    order, the last row and column background (see the module docstring)."""
    num = len(cat_ids)
    index = {int(c): k for k, c in enumerate(cat_ids)}
    matrix = np.zeros((num + 1, num + 1), dtype=np.int64)
    ids = list(img_ids) if img_ids is not None else coco_gt.getImgIds()
    dets_by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_thr and int(r["category_id"]) in index:
            dets_by_image.setdefault(int(r["image_id"]), []).append(r)
    for img_id in ids:
        anns = [
            a
            for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img_id]))
            if int(a["category_id"]) in index
        ]
        dets = sorted(dets_by_image.get(int(img_id), []), key=lambda r: -r["score"])
        pairs = _match_image(
            np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
            np.asarray([index[int(a["category_id"])] for a in anns], dtype=np.int64),
            np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            np.asarray([r["bbox"] for r in dets], dtype=np.float64).reshape(-1, 4),
            np.asarray([index[int(r["category_id"])] for r in dets], dtype=np.int64),
            iou_thr,
            num,
        )
        for t, p in pairs:
            matrix[t, p] += 1
    return matrix


def confusion_summary(
    matrix: np.ndarray, class_names: list[str], score_thr: float, iou_thr: float
) -> dict:
    """What metrics.json holds about the matrix: its thresholds and axes, and the matrix itself
    (as lists) when there are at most MAX_CLASSES_IN_METRICS classes."""
    out: dict[str, Any] = {
        "iou_thr": iou_thr,
        "score_thr": score_thr,
        "rows": "ground truth",
        "columns": "prediction",
        "classes": [*class_names, "background"],
    }
    if len(class_names) <= MAX_CLASSES_IN_METRICS:
        out["matrix"] = matrix.tolist()
    return out


def write_confusion_csv(matrix: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """confusion_matrix.csv: a header of predicted classes, one row per true class (counts);
    the background-background cell is empty (it is not defined)."""
    names = [*class_names, "background"]
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground truth \\ prediction", *names])
        for t, name in enumerate(names):
            row = [int(v) for v in matrix[t]]
            writer.writerow([name, *row[:-1], "" if t == len(names) - 1 else row[-1]])
    return Path(path)
