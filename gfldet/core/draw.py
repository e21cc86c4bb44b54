"""Detections drawn on images: boxes with class and score, and bands of edge uncertainty."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .records import to_numpy

# BGR, chosen to be distinguishable from each other and from typical photo content.
_PALETTE = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
    (147, 69, 52),
    (255, 115, 100),
    (236, 24, 0),
    (255, 56, 132),
    (133, 0, 82),
    (255, 56, 203),
    (200, 149, 255),
    (199, 55, 255),
)


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
    edge_std: Any = None,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes (xyxy pixels) and "name 0.87" labels drawn for
    detections scoring at least ``score_thr``. Inputs may be tensors or arrays.

    edge_std [K, 4] (pixels; left, top, right, bottom): also shade a band of ±std across each
    edge, so that uncertain edges show as wide bands and confident ones as thin lines.
    """
    out = np.ascontiguousarray(image_bgr).copy()
    if edge_std is not None:
        out = draw_edge_bands(out, boxes, scores, labels, edge_std, score_thr)
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
        cv2.putText(
            out,
            text,
            (left + pad, top + pad + th),
            font,
            font_scale,
            text_color,
            font_thickness,
            cv2.LINE_AA,
        )
    return out


def draw_edge_bands(
    image_bgr: np.ndarray,
    boxes: Any,
    scores: Any,
    labels: Any,
    edge_std: Any,
    score_thr: float = 0.3,
    alpha: float = 0.45,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with a translucent band of width 2·std (at least 1 px)
    centred on each edge of each box scoring at least ``score_thr``, in its class color.

    boxes [K, 4] xyxy pixels; edge_std [K, 4] pixels (left, top, right, bottom).
    """
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    boxes = to_numpy(boxes).reshape(-1, 4)
    scores = to_numpy(scores).reshape(-1)
    labels = to_numpy(labels).reshape(-1).astype(np.int64)
    std = to_numpy(edge_std).reshape(-1, 4)
    if len(std) != len(boxes):
        raise ValueError(f"edge_std has {len(std)} rows for {len(boxes)} boxes")
    overlay = out.copy()
    for i in np.argsort(scores, kind="stable"):
        if scores[i] < score_thr:
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        sl, st, sr, sb = (max(float(v), 0.5) for v in std[i])
        color = color_for_label(int(labels[i]))
        # Each band spans the box along its edge and ±std across it.
        for bx1, by1, bx2, by2 in (
            (x1 - sl, y1, x1 + sl, y2), (x1, y1 - st, x2, y1 + st),
            (x2 - sr, y1, x2 + sr, y2), (x1, y2 - sb, x2, y2 + sb),
        ):  # fmt: skip
            p1 = (min(max(round(bx1), 0), w - 1), min(max(round(by1), 0), h - 1))
            p2 = (min(max(round(bx2), 0), w - 1), min(max(round(by2), 0), h - 1))
            cv2.rectangle(overlay, p1, p2, color, cv2.FILLED)
    return cv2.addWeighted(overlay, alpha, out, 1 - alpha, 0)
