"""Inference helpers (input expansion, box drawing, prediction JSON records) and the evaluation
plots (score reliability, precision-recall).

Plots use matplotlib's Agg backend through its object API (Figure + FigureCanvasAgg), so they
need no display and leave pyplot's global state alone.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gfldet.engine.evaluator import atomic_open, to_numpy, write_json_atomic

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

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


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS


def _images_at(path: Path, exclude: Path | None) -> list[Path]:
    if path.is_dir():
        found = (p for p in path.rglob("*") if _is_image(p))
        return sorted(p for p in found if exclude is None or not _is_within(p, exclude))
    return [path] if _is_image(path) else []


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (after resolving links and '..')."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def expand_inputs(inputs: list[str], exclude: Path | None = None) -> list[Path]:
    """Expand image files, folders (recursive) and glob patterns into a list of image paths.

    Order follows ``inputs`` (each one's matches sorted); duplicates are dropped. Images below
    ``exclude`` (the output folder) found by searching a folder or a glob are left out, so that
    a command run twice never takes its own outputs as inputs; an input given by name that lies
    there is an error. Raises ``FileNotFoundError`` listing every input that matched no image,
    so typos are not silent.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    unmatched: list[str] = []
    for inp in inputs:
        path = Path(inp)
        if path.exists():
            if exclude is not None and _is_within(path, exclude):
                raise ValueError(
                    f"--out-dir {exclude} holds the input {inp}: drawn images would overwrite "
                    "the inputs or be read back as inputs next time; choose an --out-dir outside "
                    f"the inputs (e.g. {path if path.is_dir() else path.parent}/predicted)"
                )
            matches = _images_at(path, exclude)
        else:
            hits = sorted(glob.glob(inp, recursive=True))
            matches = [m for hit in hits for m in _images_at(Path(hit), exclude)]
            if exclude is not None:
                matches = [m for m in matches if not _is_within(m, exclude)]
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
    (see gfldet.engine.uncertainty), each detection gets them as 4-lists (left, top, right,
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


# -- evaluation plots ---------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(
    scores: np.ndarray, ious: np.ndarray, path: str | Path, num_bins: int = 10
) -> Path:
    """Reliability plot of scores as localisation quality: mean IoU per score bin (bars, with
    the number of detections) over a scatter of every matched detection; a perfectly
    calibrated joint score lies on the diagonal. scores [M], ious [M]. Writes a PNG."""
    from .evaluator import quality_calibration

    q = quality_calibration(np.asarray(scores, float), np.asarray(ious, float), num_bins)
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    if len(scores):
        # A random subset keeps the file small for COCO's ~10^5 matched detections.
        idx = np.random.default_rng(0).permutation(len(scores))[:5000]
        ax.scatter(np.asarray(scores)[idx], np.asarray(ious)[idx], s=3, alpha=0.25, c="0.5",
                   linewidths=0, label="matched detections")  # fmt: skip
    centers = [(b["score_lo"] + b["score_hi"]) / 2 for b in q["reliability"]]
    means = [b["mean_iou"] for b in q["reliability"]]
    ax.bar(centers, np.nan_to_num(means), width=0.9 / num_bins, color="tab:blue", alpha=0.6,
           edgecolor="tab:blue", label="mean IoU per score bin")  # fmt: skip
    for c, m, b in zip(centers, means, q["reliability"]):
        if b["count"]:
            ax.annotate(str(b["count"]), (c, m), ha="center", va="bottom", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="score = IoU")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.05),
        xlabel="score",
        ylabel="IoU with matched gt",
        title=f"score vs IoU: Pearson {q['pearson']:.3f}, Spearman {q['spearman']:.3f}",
    )
    ax.title.set_fontsize(10)
    ax.legend(loc="upper left", fontsize=8)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)


def plot_pr_curves(recall: np.ndarray, curves: dict[str, np.ndarray], path: str | Path) -> Path:
    """Precision-recall curves of a group of classes at IoU 0.50 and 0.75 (two panels).

    recall [R]: COCOeval's recall thresholds; curves: class name -> precision [T, R] (COCOeval
    eval["precision"][:, :, k, area all, maxDets 100]; T = the 10 IoU thresholds .50:.05:.95,
    -1 where undefined). Classes without gt are listed as such. Writes a PNG.
    """
    from matplotlib import colormaps

    fig = _figure(10, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, t, iou in ((axes[0], 0, "0.50"), (axes[1], 5, "0.75")):
        for k, (name, p) in enumerate(curves.items()):
            color = colormaps["tab10"](k % 10)
            prec = p[min(t, len(p) - 1)]
            if (prec < 0).all():
                ax.plot([], [], color=color, label=f"{name} (no gt)")
                continue
            ap = float(prec[prec > -1].mean())
            ax.plot(recall, np.where(prec < 0, np.nan, prec), color=color, lw=1.5,
                    label=f"{name} (AP{iou[2:]} {ap:.3f})")  # fmt: skip
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", title=f"IoU = {iou}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
    axes[0].set_ylabel("precision")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)
