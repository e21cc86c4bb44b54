"""Inference helpers: input expansion, box drawing and prediction JSON records."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gfldet.engine.evaluator import to_numpy, write_json_atomic

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# BGR, chosen to be distinguishable from each other and from typical photo content.
_PALETTE = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS


def _images_at(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if _is_image(p))
    return [path] if _is_image(path) else []


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Expand image files, folders (recursive) and glob patterns into a list of image paths.

    Order follows ``inputs`` (each one's matches sorted); duplicates are dropped. Raises
    ``FileNotFoundError`` listing every input that matched no image, so typos are not silent.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    unmatched: list[str] = []
    for inp in inputs:
        path = Path(inp)
        if path.exists():
            matches = _images_at(path)
        else:
            hits = sorted(glob.glob(inp, recursive=True))
            matches = [m for hit in hits for m in _images_at(Path(hit))]
        if not matches:
            unmatched.append(inp)
        for m in matches:
            key = m.resolve()
            if key not in seen:
                seen.add(key)
                found.append(m)
    if unmatched:
        raise FileNotFoundError(f"no images matched: {', '.join(unmatched)}")
    return found


def color_for_label(label: int) -> tuple[int, int, int]:
    """Fixed BGR color for a class label (cycles through a 20-color palette)."""
    b, g, r = _PALETTE[int(label) % len(_PALETTE)]
    return int(b), int(g), int(r)


def draw_detections(
    image_bgr: np.ndarray,
    boxes: Any,
    scores: Any,
    labels: Any,
    class_names: list[str],
    score_thr: float = 0.3,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes (xyxy pixels) and "name 0.87" labels drawn for
    detections scoring at least ``score_thr``. Inputs may be tensors or arrays."""
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    # Scale strokes and text with the image so labels stay legible on 300 px and 4K images alike.
    size = max(h, w)
    thickness = max(1, round(size / 400))
    font_scale = max(0.35, size / 1600)
    font_thickness = max(1, thickness // 2)
    font = cv2.FONT_HERSHEY_SIMPLEX

    boxes = to_numpy(boxes).reshape(-1, 4)
    scores = to_numpy(scores).reshape(-1)
    labels = to_numpy(labels).reshape(-1).astype(np.int64)
    # Draw low scores first so the most confident labels end up on top.
    for i in np.argsort(scores, kind="stable"):
        if scores[i] < score_thr:
            continue
        x1, x2 = (min(max(round(float(v)), 0), w - 1) for v in boxes[i, 0::2])
        y1, y2 = (min(max(round(float(v)), 0), h - 1) for v in boxes[i, 1::2])
        label = int(labels[i])
        color = color_for_label(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)

        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores[i]:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, font, font_scale, font_thickness)
        pad = max(1, thickness)
        box_h = th + baseline + 2 * pad
        # Put the label above the box, or inside it when the box touches the top edge.
        top = y1 - box_h if y1 >= box_h else y1
        left = min(x1, max(0, w - tw - 2 * pad))
        cv2.rectangle(out, (left, top), (left + tw + 2 * pad, top + box_h), color, cv2.FILLED)
        # Dark text on light colors, white on dark ones, for contrast.
        luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luma > 150 else (255, 255, 255)
        cv2.putText(out, text, (left + pad, top + pad + th), font, font_scale, text_color,
                    font_thickness, cv2.LINE_AA)
    return out


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
    ``score >= score_thr`` are kept.
    """
    boxes = to_numpy(det["boxes"]).reshape(-1, 4)
    scores = to_numpy(det["scores"]).reshape(-1)
    labels = to_numpy(det["labels"]).reshape(-1).astype(np.int64)
    detections = [
        {
            "bbox_xyxy": [round(float(v), 2) for v in box],
            "score": float(score),
            "category_id": int(cat_ids[label]),
            "category_name": class_names[label],
        }
        for box, score, label in zip(boxes, scores, labels, strict=True)
        if score >= score_thr
    ]
    return {
        "file": str(file),
        "width": int(image_shape[1]),
        "height": int(image_shape[0]),
        "detections": detections,
    }


def write_predictions_json(records: list[dict], path: str | Path) -> None:
    """Atomically write prediction records (see :func:`prediction_record`) as indented JSON."""
    write_json_atomic(records, path, indent=2)
