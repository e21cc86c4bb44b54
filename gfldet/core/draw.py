"""Boxes drawn on images: detections with class and score, ground truth, bands of edge
uncertainty, and mosaics of training batches.

Labels are laid out so that none covers another (see layout_labels) and are drawn on a filled
patch of their box's color with black or white text, so they read on any background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .files import atomic_open
from .records import to_numpy

DRAW_SCORE_THR = 0.3
"""Default score threshold for drawing detections (infer, video, val previews, the confusion
matrix): below it a detection is not drawn or counted. One definition for every caller."""

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
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def color_for_label(label: int) -> tuple[int, int, int]:
    """Fixed BGR color for a class label (cycles through a 20-color palette)."""
    b, g, r = _PALETTE[int(label) % len(_PALETTE)]
    return int(b), int(g), int(r)


def _overlap_area(cands: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Total intersection area of each candidate rect [C, 4] with the placed rects [P, 4]."""
    if not len(placed):
        return np.zeros(len(cands))
    iw = np.minimum(cands[:, None, 2], placed[None, :, 2]) - np.maximum(
        cands[:, None, 0], placed[None, :, 0]
    )
    ih = np.minimum(cands[:, None, 3], placed[None, :, 3]) - np.maximum(
        cands[:, None, 1], placed[None, :, 1]
    )
    return (np.clip(iw, 0, None) * np.clip(ih, 0, None)).sum(axis=1)


def _candidates(box: np.ndarray, lw: int, lh: int, w: int, h: int, rings: int) -> np.ndarray:
    """Positions (x1, y1, x2, y2) for a label of lw x lh at box, most preferred first: above the
    box, inside its top, below it, inside its bottom (left- then right-aligned), then further
    above and below and sideways, ring by ring. All are kept inside the w x h image."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    xs = [x1, x2 - lw]
    ys = [y1 - lh, y1, y2, y2 - lh]
    pos = [(x, y) for y in ys for x in xs]
    for k in range(1, rings + 1):
        for dy in (-k * lh, k * lh):
            base = y1 - lh if dy < 0 else y2
            pos += [(x, base + dy) for x in xs]
        for dx in (-k * lw // 2, k * lw // 2):
            pos += [(x1 + dx, y) for y in ys[:2]]
    p = np.asarray(pos, dtype=np.int64)
    p[:, 0] = np.clip(p[:, 0], 0, max(w - lw, 0))
    p[:, 1] = np.clip(p[:, 1], 0, max(h - lh, 0))
    return np.concatenate([p, p + (lw, lh)], axis=1)


def layout_labels(
    boxes: np.ndarray, sizes: Sequence[tuple[int, int]], width: int, height: int, rings: int = 6
) -> np.ndarray:
    """Where to draw each box's label so that no label covers another.

    boxes [K, 4] xyxy pixels in priority order (the first gets the best place); sizes: (w, h)
    of each label patch. Each label goes to the first free position of a list ordered by
    preference (above the box, inside its top, below it, inside its bottom, then stepping
    further away), always inside the image; when no position is free (more labels than room),
    to the one that overlaps the placed labels least. Returns [K, 4] int rects (x1, y1, x2, y2).
    """
    placed = np.zeros((0, 4), dtype=np.int64)
    for box, (lw, lh) in zip(np.asarray(boxes).reshape(-1, 4), sizes, strict=True):
        cands = _candidates(box, int(lw), int(lh), width, height, rings)
        overlap = _overlap_area(cands, placed)
        best = cands[int(np.argmin(overlap))]  # argmin: the first free one when any is free
        placed = np.concatenate([placed, best[None]])
    return placed


def draw_boxes(
    image_bgr: np.ndarray,
    boxes: Any,
    labels: Any,
    class_names: Sequence[str],
    scores: Any = None,
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes (xyxy pixels) in their class color and a label
    "name" (or "name 0.87" with ``scores``, or ``texts[i]`` when given) for each, laid out so
    none covers another (higher scores get the better places). Draws every box given: filter by
    score before calling."""
    out = np.ascontiguousarray(image_bgr).copy()
    h, w = out.shape[:2]
    boxes = to_numpy(boxes).reshape(-1, 4).astype(np.float64)
    labels = to_numpy(labels).reshape(-1).astype(np.int64)
    if scores is not None:
        scores = to_numpy(scores).reshape(-1).astype(np.float64)
    if not len(boxes):
        return out
    # Scale strokes and text with the image so labels stay legible on 300 px and 4K images alike.
    size = max(h, w)
    thickness = max(1, round(size / 400))
    font_scale = max(0.35, size / 1600)
    font_thickness = max(1, thickness // 2)
    pad = max(1, thickness)

    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(boxes))
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(np.round(clipped[:, 0::2]), 0, w - 1)
    clipped[:, 1::2] = np.clip(np.round(clipped[:, 1::2]), 0, h - 1)
    # Least confident first, so the most confident box outlines end up on top.
    for i in order[::-1]:
        x1, y1, x2, y2 = (int(v) for v in clipped[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color_for_label(labels[i]), thickness, cv2.LINE_AA)

    shown, sizes, baselines = [], [], []
    for i in order:
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        if texts is not None:
            text = str(texts[i])
        else:
            text = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        shown.append(text)
        sizes.append((tw + 2 * pad, th + baseline + 2 * pad))
        baselines.append(baseline)
    rects = layout_labels(clipped[order], sizes, w, h)
    # Labels after every box (no outline crosses a label); best-placed last, on top.
    for k in range(len(order) - 1, -1, -1):
        lx1, ly1, lx2, ly2 = (int(v) for v in rects[k])
        color = color_for_label(labels[order[k]])
        cv2.rectangle(out, (lx1, ly1), (lx2 - 1, ly2 - 1), color, cv2.FILLED)
        # Dark text on light colors, white on dark ones, for contrast.
        luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luma > 150 else (255, 255, 255)
        origin = (lx1 + pad, ly2 - pad - baselines[k])
        cv2.putText(
            out, shown[k], origin, _FONT, font_scale, text_color, font_thickness, cv2.LINE_AA
        )
    return out


def draw_detections(
    image_bgr: np.ndarray,
    boxes: Any,
    scores: Any,
    labels: Any,
    class_names: Sequence[str],
    score_thr: float = DRAW_SCORE_THR,
    edge_std: Any = None,
) -> np.ndarray:
    """Return a copy of ``image_bgr`` with boxes (xyxy pixels) and "name 0.87" labels drawn for
    detections scoring at least ``score_thr`` (labels never hide each other, see draw_boxes).
    Inputs may be tensors or arrays.

    edge_std [K, 4] (pixels; left, top, right, bottom): also shade a band of ±std across each
    edge, so that uncertain edges show as wide bands and confident ones as thin lines.
    """
    out = np.ascontiguousarray(image_bgr)
    if edge_std is not None:
        out = draw_edge_bands(out, boxes, scores, labels, edge_std, score_thr)
    boxes = to_numpy(boxes).reshape(-1, 4)
    scores = to_numpy(scores).reshape(-1)
    labels = to_numpy(labels).reshape(-1)
    keep = scores >= score_thr
    return draw_boxes(out, boxes[keep], labels[keep], class_names, scores[keep])


def draw_edge_bands(
    image_bgr: np.ndarray,
    boxes: Any,
    scores: Any,
    labels: Any,
    edge_std: Any,
    score_thr: float = DRAW_SCORE_THR,
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
        bands = (
            (x1 - sl, y1, x1 + sl, y2),
            (x1, y1 - st, x2, y1 + st),
            (x2 - sr, y1, x2 + sr, y2),
            (x1, y2 - sb, x2, y2 + sb),
        )
        for bx1, by1, bx2, by2 in bands:
            p1 = (min(max(round(bx1), 0), w - 1), min(max(round(by1), 0), h - 1))
            p2 = (min(max(round(bx2), 0), w - 1), min(max(round(by2), 0), h - 1))
            cv2.rectangle(overlay, p1, p2, color, cv2.FILLED)
    return cv2.addWeighted(overlay, alpha, out, 1 - alpha, 0)


def write_jpeg(image_bgr: np.ndarray, path: str | Path, quality: int = 90) -> Path:
    """Writes a BGR uint8 image as a JPEG, atomically (a crash never leaves half a file)."""
    ok, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"could not encode {path} as JPEG")
    with atomic_open(path, "wb") as f:
        f.write(data.tobytes())
    return Path(path)


def draw_batch(
    images: Any,
    targets: Sequence[dict],
    class_names: Sequence[str],
    path: str | Path,
    max_images: int = 16,
    max_side: int = 1920,
) -> Path:
    """Writes one JPEG mosaic of a training batch with its ground-truth boxes and class names
    drawn, as the model is fed (after augmentation), atomically; returns the path.

    images: uint8 tensor or array [B, 3, H, W], RGB (a collated batch, padding included);
    targets: one dict per image with "boxes" [N, 4] xyxy pixels of the batch image and
    "labels" [N] (indices into class_names); "img_size" (h, w), when given, is the image's
    valid area and the padding beyond it is shown grey. The first `max_images` images are laid out
    in a near-square grid, scaled down so the mosaic's longer side is at most `max_side`.
    """
    batch = to_numpy(images)
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != np.uint8:
        raise ValueError(
            f"draw_batch: images must be uint8 [B, 3, H, W], got {batch.dtype} {list(batch.shape)}"
        )
    n = min(len(batch), len(targets), int(max_images))
    if n < 1:
        raise ValueError(
            f"draw_batch: nothing to draw ({len(batch)} images, max_images={max_images})"
        )
    _, _, h, w = batch.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    gap = 2  # white lines between the tiles
    scale = min(
        1.0, (max_side - (cols - 1) * gap) / (cols * w), (max_side - (rows - 1) * gap) / (rows * h)
    )
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    mosaic = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255, np.uint8)
    for k in range(n):
        tile = np.ascontiguousarray(batch[k].transpose(1, 2, 0)[:, :, ::-1])  # RGB -> BGR
        if scale != 1.0:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        t = targets[k]
        if "img_size" in t:
            vh, vw = (
                round(float(t["img_size"][0]) * th / h),
                round(float(t["img_size"][1]) * tw / w),
            )
            tile[vh:] = 114  # grey: padding, not image content
            tile[:vh, vw:] = 114
        boxes = to_numpy(t["boxes"]).reshape(-1, 4).astype(np.float64) * (
            tw / w,
            th / h,
            tw / w,
            th / h,
        )
        tile = draw_boxes(tile, boxes, t["labels"], class_names)
        r, c = divmod(k, cols)
        y, x = r * (th + gap), c * (tw + gap)
        mosaic[y : y + th, x : x + tw] = tile
    return write_jpeg(mosaic, path)
