"""COCO-style bbox evaluation: a dataset predicted (sharded over processes under torchrun), its
COCO results scored by pycocotools, and the metrics, tables and plots."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..core import dist as gdist
from ..core.draw import DRAW_SCORE_THR
from ..core.files import atomic_open, write_json_atomic
from ..core.records import detections_to_coco
from .confusion import CONFUSION_IOU, confusion_matrix, confusion_summary, write_confusion_csv

log = logging.getLogger("gfldet")

# Order of COCOeval.stats (the 12 standard summary lines).
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
PR_GROUP = 10  # classes per precision-recall plot
MANIFEST = "eval_manifest.json"  # the files an evaluation wrote into its out_dir
_PR_CURVES = re.compile(r"pr_curves_\d+\.png")


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


PER_CLASS_KEYS = ("AP", "AP50", "recall", "num_gt", "num_det")


def _per_class_table(per_class: dict[str, dict]) -> str:
    width = max([len("class")] + [len(n) for n in per_class])

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.3f}"

    lines = [
        f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'recall':>6}  {'num_gt':>7}  {'num_det':>7}"
    ]
    for name, m in per_class.items():
        lines.append(
            f"{name:<{width}}  {fmt(m['AP']):>6}  {fmt(m['AP50']):>6}  {fmt(m['recall']):>6}  "
            f"{m['num_gt']:>7}  {m['num_det']:>7}"
        )
    return "\n".join(lines)


def write_per_class_csv(per_class: dict[str, dict], path: str | Path) -> None:
    """per_class.csv: one row per class with the columns of PER_CLASS_KEYS (empty = undefined)."""
    import csv

    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *PER_CLASS_KEYS])
        for name, m in per_class.items():
            row = [m[k] for k in PER_CLASS_KEYS]
            writer.writerow(
                [name, *("" if isinstance(v, float) and math.isnan(v) else v for v in row)]
            )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..N-1 of x [N], tied values sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # undefined without spread
    return float(np.corrcoef(a, b)[0, 1])


def matched_score_iou(ev: Any) -> tuple[np.ndarray, np.ndarray]:
    """Score and IoU of every detection that COCOeval matched to a gt at IoU >= 0.5.

    Uses pycocotools' own matching (per image and class, detections by descending score, each
    takes the best still-free gt; area "all", up to maxDets[-1] detections per image).
    Detections matched to crowd regions are ignored, as COCOeval does. ev: an evaluated
    COCOeval. Returns scores [M], ious [M].
    """
    t = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    area_all = ev.params.areaRng[0]
    scores: list[float] = []
    ious: list[float] = []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != area_all:
            continue
        matched = e["dtMatches"][t]
        if not (matched > 0).any():
            continue
        key = (e["image_id"], e["category_id"])
        # ev.ious[key]: [D, G], detections in the same score order as e, gts in _gts order.
        column = {g["id"]: j for j, g in enumerate(ev._gts[key])}
        for d, (gt_id, ignored) in enumerate(zip(matched, e["dtIgnore"][t])):
            if gt_id > 0 and not ignored:
                scores.append(e["dtScores"][d])
                ious.append(ev.ious[key][d, column[int(gt_id)]])
    return np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)


def quality_calibration(scores: np.ndarray, ious: np.ndarray, num_bins: int = 10) -> dict:
    """How well scores predict localisation quality (the paper's Fig. 2(b)).

    scores [M], ious [M] of matched detections. Returns {"pearson", "spearman" (NaN with fewer
    than 2 pairs or no spread), "num_matched", "reliability": [{"score_lo", "score_hi",
    "count", "mean_score", "mean_iou"}] per score bin of width 1/num_bins}.
    """
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, num_bins - 1)
    reliability = []
    for b in range(num_bins):
        sel = which == b
        n = int(sel.sum())
        reliability.append(
            {
                "score_lo": round(float(edges[b]), 4),
                "score_hi": round(float(edges[b + 1]), 4),
                "count": n,
                "mean_score": float(scores[sel].mean()) if n else float("nan"),
                "mean_iou": float(ious[sel].mean()) if n else float("nan"),
            }
        )
    return {
        "pearson": _pearson(scores, ious),
        "spearman": _pearson(_ranks(scores), _ranks(ious)) if len(scores) else float("nan"),
        "num_matched": len(scores),
        "reliability": reliability,
    }


def coco_evaluate(
    coco_gt: Any,
    results: list[dict],
    class_names: list[str],
    cat_ids: list[int],
    out_dir: str | Path | None,
    img_ids: list[int] | None = None,
    plots: bool = True,
    confusion_score_thr: float = DRAW_SCORE_THR,
) -> dict:
    """Evaluate COCO bbox results with pycocotools and return a metrics dict.

    Keys: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (floats in [0, 1];
    NaN where undefined, e.g. no gt of that size); ``per_class`` {name: {AP, AP50, recall,
    num_gt, num_det}} (recall: share of the gts found at IoU >= 0.5 with up to 100 detections
    per image; AP and recall NaN for classes without gt); ``quality`` {pearson, spearman,
    num_matched, reliability} (see quality_calibration; NaN without matched detections);
    ``confusion`` {iou_thr, score_thr, rows, columns, classes[, matrix]} (the detection
    confusion matrix at IoU 0.5 of the detections scoring >= ``confusion_score_thr``, the
    drawing threshold by default; see evaluation.confusion; the matrix itself only for up to
    30 classes). Prints the standard summary, a per-class table and a confusion summary. With
    ``out_dir``, writes ``detections.json``, ``metrics.json``, ``per_class.csv``,
    ``confusion_matrix.csv`` and, with ``plots``, ``confusion_matrix.png``,
    ``calibration.png`` (reliability of scores) and ``pr_curves_<g>.png`` (precision-recall per
    group of up to 10 classes), and lists them in ``eval_manifest.json`` (see _write_outputs).
    """
    from pycocotools.cocoeval import COCOeval

    if img_ids is not None:
        keep = set(img_ids)
        results = [r for r in results if r["image_id"] in keep]
    if out_dir is not None:  # first: the predictions are kept even if the scoring fails
        write_json_atomic(results, Path(out_dir) / "detections.json")

    num_gt = {cid: _count_gt(coco_gt, cid, img_ids) for cid in cat_ids}
    num_det = {cid: 0 for cid in cat_ids}
    for r in results:
        if r["category_id"] in num_det:
            num_det[r["category_id"]] += 1
    nan = float("nan")
    pr_curves: dict[str, np.ndarray] = {}  # name -> precision [T, R] at area "all", 100 dets
    rec_thrs = np.linspace(0.0, 1.0, 101)
    if not results:
        # COCO.loadRes([]) raises IndexError, but "no detections" is a legitimate score of zero.
        warnings.warn("coco_evaluate: no detections, reporting all-zero metrics", stacklevel=2)
        metrics: dict[str, Any] = {k: 0.0 for k in STAT_KEYS}
        metrics["per_class"] = {
            name: {
                "AP": 0.0 if num_gt[cid] else nan,
                "AP50": 0.0 if num_gt[cid] else nan,
                "recall": 0.0 if num_gt[cid] else nan,
                "num_gt": num_gt[cid],
                "num_det": 0,
            }
            for name, cid in zip(class_names, cat_ids, strict=True)
        }
        matched = (np.zeros(0), np.zeros(0))
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

        # precision: [iou thr T, recall R, category K, area A, maxDets M]; recall: [T, K, A, M];
        # area 0 = "all", maxDets -1 = 100; iouThrs[0] == 0.5 gives AP50.
        precision, recall = ev.eval["precision"], ev.eval["recall"]
        rec_thrs = np.asarray(ev.params.recThrs)
        k_index = {cid: k for k, cid in enumerate(ev.params.catIds)}
        metrics["per_class"] = {}
        for name, cid in zip(class_names, cat_ids, strict=True):
            if cid in k_index:
                p = precision[:, :, k_index[cid], 0, -1]
                r = recall[0, k_index[cid], 0, -1]
                pr_curves[name] = p
            else:
                p, r = np.full((1, 1), -1.0), -1.0
            metrics["per_class"][name] = {
                "AP": _mean_valid(p),
                "AP50": _mean_valid(p[0]),
                "recall": _stat(float(r)),
                "num_gt": num_gt[cid],
                "num_det": num_det[cid],
            }
        matched = matched_score_iou(ev)
    metrics["quality"] = quality_calibration(*matched)

    conf = confusion_matrix(coco_gt, results, cat_ids, img_ids, score_thr=confusion_score_thr)
    metrics["confusion"] = confusion_summary(conf, class_names, confusion_score_thr, CONFUSION_IOU)

    print(_per_class_table(metrics["per_class"]))
    q = metrics["quality"]
    print(
        f"score-IoU correlation of {q['num_matched']} matched detections: "
        f"Pearson {q['pearson']:.3f}, Spearman {q['spearman']:.3f}"
    )
    print(_confusion_line(conf, confusion_score_thr))
    if out_dir is not None:
        _write_outputs(
            Path(out_dir), metrics, conf, class_names, pr_curves, rec_thrs, matched, plots
        )
    return metrics


def _confusion_line(conf: np.ndarray, score_thr: float) -> str:
    n = len(conf) - 1
    tp = int(np.trace(conf[:n, :n]))
    confused = int(conf[:n, :n].sum()) - tp
    return (
        f"confusion at IoU {CONFUSION_IOU:g}, score >= {score_thr:g}: {tp} right, {confused} "
        f"of another class, {int(conf[:n, n].sum())} missed, {int(conf[n, :n].sum())} false "
        "positives"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _earlier_outputs(out_dir: Path) -> dict[str, str]:
    """{file name: sha256} of what an earlier evaluation wrote into out_dir, from its manifest
    ({} when there is none or it is not one gfldet wrote)."""
    try:
        files = json.loads((out_dir / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _write_outputs(
    out_dir: Path,
    metrics: dict,
    conf: np.ndarray,
    class_names: list[str],
    pr_curves: dict[str, np.ndarray],
    rec_thrs: np.ndarray,
    matched: tuple[np.ndarray, np.ndarray],
    plots: bool,
) -> None:
    """Writes the evaluation's files into out_dir (detections.json is already there) and lists
    them with their sha256 in eval_manifest.json. The number of pr_curves_<g>.png files
    follows the number of classes, so an earlier evaluation's extra groups are removed, but
    only files its manifest lists that still hold what it wrote: other files are never touched.
    """
    from .plots import plot_confusion_matrix, plot_pr_curves, plot_reliability

    earlier = _earlier_outputs(out_dir)
    written = [out_dir / "detections.json", out_dir / "metrics.json", out_dir / "per_class.csv"]
    write_json_atomic(metrics, written[1], indent=2)
    write_per_class_csv(metrics["per_class"], written[2])
    written.append(write_confusion_csv(conf, class_names, out_dir / "confusion_matrix.csv"))
    if plots:
        score_thr, iou_thr = metrics["confusion"]["score_thr"], metrics["confusion"]["iou_thr"]
        path = out_dir / "confusion_matrix.png"
        written.append(plot_confusion_matrix(conf, class_names, score_thr, iou_thr, path))
        written.append(plot_reliability(*matched, metrics["quality"], out_dir / "calibration.png"))
        names = list(pr_curves)
        for g in range(0, len(names), PR_GROUP):
            group = {n: pr_curves[n] for n in names[g : g + PR_GROUP]}
            path = out_dir / f"pr_curves_{g // PR_GROUP + 1}.png"
            written.append(plot_pr_curves(rec_thrs, group, path))
    manifest = {p.name: _sha256(p) for p in written}
    record = {"written_by": "gfldet evaluation", "files": manifest}
    write_json_atomic(record, out_dir / MANIFEST, indent=2)
    for name, digest in earlier.items():
        old = out_dir / name
        # Only plain pr_curves names: a manifest never points outside out_dir.
        if name in manifest or not _PR_CURVES.fullmatch(str(name)) or not old.is_file():
            continue
        if _sha256(old) == digest:  # still the file the earlier evaluation wrote
            old.unlink()


def format_metrics(metrics: dict) -> str:
    """One-line summary for logs, e.g. ``AP 0.512 | AP50 0.803 | AP75 0.551 | ...``."""
    parts = []
    for key in STAT_KEYS[:6]:
        value = metrics.get(key)
        if value is None:
            continue
        parts.append(f"{key} {'-' if math.isnan(value) else f'{value:.3f}'}")
    return " | ".join(parts)


class _Recorded:
    """Iterates a loader, recording the image ids it yields and leaving out empty batches
    (all images unreadable and skipped)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.ids = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for images, targets in self.loader:
            if targets:
                self.ids.extend(int(t["image_id"]) for t in targets)
                yield images, targets


def gather_detections(
    model: torch.nn.Module, loader: Any, device: torch.device
) -> tuple[list, list[int]]:
    """Predicts this rank's share of the loader's images and gathers everything on rank 0.

    Returns (COCO results, ids of the images predicted) on rank 0 and ([], []) on the others.
    Each image's detections appear exactly once, however the loader shards (or pads) the set
    over ranks; images skipped as unreadable (data.skip_bad_images) are not among the ids.
    """
    seen = _Recorded(loader)
    cat_ids = loader.dataset.cat_ids
    results = predict_dataset(model, seen, device, progress=gdist.is_main(), cat_ids=cat_ids)
    parts = gdist.all_gather_object((seen.ids, results))
    if not gdist.is_main():
        return [], []
    owner: dict[int, int] = {}  # image id -> the first rank that predicted it
    for r, (ids, _) in enumerate(parts):
        for i in ids:
            owner.setdefault(i, r)
    results = [d for r, (_, res) in enumerate(parts) for d in res if owner[d["image_id"]] == r]
    return results, sorted(owner)


def evaluate(
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    out_dir: Path | None,
    plots: bool = True,
) -> dict:
    """COCO evaluation of the loader's images, predicted in shards by all ranks (see
    gather_detections). Returns the metrics on rank 0 and {} on the others; with `out_dir`,
    rank 0 writes detections.json, metrics.json (and plots, see coco_evaluate)."""
    ds = loader.dataset
    results, ids = gather_detections(model, loader, device)
    if not gdist.is_main():
        return {}
    img_ids = None
    if len(ids) < len(ds.img_ids):
        log.warning(
            "evaluation: %d of %d images could not be read and are left out of the scoring",
            len(ds.img_ids) - len(ids),
            len(ds.img_ids),
        )
        img_ids = ids
    return coco_evaluate(ds.coco, results, ds.class_names, ds.cat_ids, out_dir, img_ids, plots)
