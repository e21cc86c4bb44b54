"""Detections as records: COCO results (evaluation) and prediction records (`gfldet infer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import write_json_atomic


def to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def detections_to_coco(image_id: int, det: dict, cat_ids: list[int]) -> list[dict]:
    """Convert one image's model output (xyxy boxes, contiguous labels) to COCO result dicts
    with ``bbox`` = [x, y, w, h] and ``category_id`` = the original dataset id."""
    boxes = to_numpy(det["boxes"]).reshape(-1, 4).astype(np.float64)
    scores = to_numpy(det["scores"]).reshape(-1)
    labels = to_numpy(det["labels"]).reshape(-1).astype(np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(cat_ids[label]),
            "bbox": [round(float(v), 2) for v in box],
            "score": float(score),
        }
        for box, score, label in zip(xywh, scores, labels, strict=True)
    ]


def prediction_record(
    file: str | Path,
    image_shape: tuple[int, ...],
    det: dict,
    cat_ids: list[int],
    class_names: list[str],
    score_thr: float = 0.0,
) -> dict:
    """Build the JSON record for one image from a model output dict (tensors on any device).

    ``image_shape`` is ``(height, width[, channels])``; only detections with
    ``score >= score_thr`` are kept. When ``det`` holds ``edge_std`` / ``edge_top2`` [K, 4]
    (see gfldet.inference.uncertainty), each detection gets them as 4-lists (left, top, right,
    bottom; std in pixels).
    """
    boxes = to_numpy(det["boxes"]).reshape(-1, 4)
    scores = to_numpy(det["scores"]).reshape(-1)
    labels = to_numpy(det["labels"]).reshape(-1).astype(np.int64)
    extra = {k: to_numpy(det[k]).reshape(-1, 4) for k in ("edge_std", "edge_top2") if k in det}
    detections = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
        if score < score_thr:
            continue
        d = {
            "bbox_xyxy": [round(float(v), 2) for v in box],
            "score": float(score),
            "category_id": int(cat_ids[label]),
            "category_name": class_names[label],
        }
        for k, v in extra.items():
            d[k] = [round(float(x), 3) for x in v[i]]
        detections.append(d)
    return {
        "file": str(file),
        "width": int(image_shape[1]),
        "height": int(image_shape[0]),
        "detections": detections,
    }


def write_predictions_json(records: list[dict], path: str | Path) -> None:
    """Atomically write prediction records (see :func:`prediction_record`) as indented JSON."""
    write_json_atomic(records, path, indent=2)
