"""COCO-style bbox evaluation: model outputs -> COCO results -> pycocotools metrics."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

# Order of COCOeval.stats (the 12 standard summary lines).
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON (readable by any parser)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(obj: Any, path: str | Path, indent: int | None = None) -> None:
    """Write JSON via a temp file in the same directory + os.replace, so readers (or a crash
    mid-write) never see a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(obj), f, indent=indent)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


@torch.inference_mode()
def predict_dataset(
    model: Any,
    loader: Any,
    device: torch.device | str,
    progress: bool = True,
    cat_ids: list[int] | None = None,
) -> list[dict]:
    """Run ``model.predict`` over ``loader`` and return the COCO results list.

    ``cat_ids`` defaults to ``loader.dataset.cat_ids``. Images seen twice (e.g. padded
    distributed samplers) are only counted once so they cannot skew AP.
    """
    if cat_ids is None:
        cat_ids = loader.dataset.cat_ids
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    results: list[dict] = []
    seen: set[int] = set()
    try:
        for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            for target, det in zip(targets, model.predict(images, targets), strict=True):
                image_id = int(target["image_id"])
                if image_id in seen:
                    continue
                seen.add(image_id)
                results.extend(detections_to_coco(image_id, det, cat_ids))
    finally:
        if was_training:
            model.train()
    return results


def _stat(value: float) -> float:
    """pycocotools reports -1 when a metric is undefined (no gt in that range): use NaN."""
    return float("nan") if value < 0 else float(value)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _count_gt(coco_gt: Any, cat_id: int, img_ids: list[int] | None) -> int:
    ann_ids = coco_gt.getAnnIds(imgIds=img_ids or [], catIds=[cat_id])
    return sum(1 for a in coco_gt.loadAnns(ann_ids) if not a.get("iscrowd", 0))


def _per_class_table(per_class: dict[str, dict]) -> str:
    width = max([len("class")] + [len(n) for n in per_class])

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.3f}"

    lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'num_gt':>7}"]
    for name, m in per_class.items():
        lines.append(f"{name:<{width}}  {fmt(m['AP']):>6}  {fmt(m['AP50']):>6}  {m['num_gt']:>7}")
    return "\n".join(lines)


def coco_evaluate(
    coco_gt: Any,
    results: list[dict],
    class_names: list[str],
    cat_ids: list[int],
    out_dir: str | Path | None,
    img_ids: list[int] | None = None,
) -> dict:
    """Evaluate COCO bbox results with pycocotools and return a metrics dict.

    Keys: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (floats in [0, 1];
    NaN where undefined, e.g. no gt of that size) and ``per_class`` {name: {AP, AP50, num_gt}}
    (AP NaN for classes without gt). Prints the standard summary and a per-class table; writes
    ``detections.json`` and ``metrics.json`` to ``out_dir`` when given.
    """
    from pycocotools.cocoeval import COCOeval

    if img_ids is not None:
        keep = set(img_ids)
        results = [r for r in results if r["image_id"] in keep]
    if out_dir is not None:
        write_json_atomic(results, Path(out_dir) / "detections.json")

    num_gt = {cid: _count_gt(coco_gt, cid, img_ids) for cid in cat_ids}
    if not results:
        # COCO.loadRes([]) raises IndexError, but "no detections" is a legitimate score of zero.
        warnings.warn("coco_evaluate: no detections, reporting all-zero metrics", stacklevel=2)
        metrics: dict[str, Any] = {k: 0.0 for k in STAT_KEYS}
        metrics["per_class"] = {
            name: {"AP": 0.0 if num_gt[cid] else float("nan"),
                   "AP50": 0.0 if num_gt[cid] else float("nan"), "num_gt": num_gt[cid]}
            for name, cid in zip(class_names, cat_ids, strict=True)
        }
    else:
        # loadRes adds area/id/segmentation keys in place: give it copies, keep ours clean.
        # Its chatter ("Loading and preparing results...", "DONE (t=..)") is just noise in logs.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
            if img_ids is not None:
                ev.params.imgIds = sorted(img_ids)
            ev.evaluate()
            ev.accumulate()
        ev.summarize()
        metrics = {k: _stat(v) for k, v in zip(STAT_KEYS, ev.stats, strict=True)}

        # precision: [iou thr T, recall R, category K, area A, maxDets M]; area 0 = "all",
        # maxDets -1 = 100; iouThrs[0] == 0.5 gives AP50.
        precision = ev.eval["precision"]
        k_index = {cid: k for k, cid in enumerate(ev.params.catIds)}
        metrics["per_class"] = {}
        for name, cid in zip(class_names, cat_ids, strict=True):
            p = precision[:, :, k_index[cid], 0, -1] if cid in k_index else np.full((1, 1), -1.0)
            metrics["per_class"][name] = {
                "AP": _mean_valid(p), "AP50": _mean_valid(p[0]), "num_gt": num_gt[cid]
            }

    print(_per_class_table(metrics["per_class"]))
    if out_dir is not None:
        write_json_atomic(metrics, Path(out_dir) / "metrics.json", indent=2)
    return metrics


def format_metrics(metrics: dict) -> str:
    """One-line summary for logs, e.g. ``AP 0.512 | AP50 0.803 | AP75 0.551 | ...``."""
    parts = []
    for key in STAT_KEYS[:6]:
        value = metrics.get(key)
        if value is None:
            continue
        parts.append(f"{key} {'-' if math.isnan(value) else f'{value:.3f}'}")
    return " | ".join(parts)
