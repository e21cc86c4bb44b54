"""The numbers of `gfldet data stats`: a dataset split counted and assigned as GFL will train
on it (see gfldet.data.stats for what is measured and why).

`compute_statistics(cfg, max_images, split)` returns them as a JSON-ready dict. Nothing reads
an image: sizes come from the annotation file, and the ATSS assignment runs on box coordinates
only. Counts and box sizes always cover the whole split (they cost next to nothing); the
assignment and the edge distances can be limited to a seeded sample (`max_images`), which is
what makes the report affordable on datasets of COCO's size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ...model.atss import atss_assign
from ...model.box_ops import bbox2distance, grid_points, square_anchors
from ...model.build import build_model
from ..coco import CocoDetection
from ..loader import build_dataset
from ..transforms import rescale_size

log = logging.getLogger("gfldet")

SAMPLE_SEED = 0  # the `max_images` sample: the same images on every run
BEYOND_LIMIT = 0.01  # a share of edges beyond reg_max * bin_width above this gets a suggestion
UNASSIGNED_LIMIT = 0.01  # the same for gts that get no positive location at all
COCO_SMALL, COCO_MEDIUM = 32**2, 96**2  # COCOeval's area ranges, original pixels
PERCENTILES = (50, 90, 99)
# Edge distances are accumulated as histograms (in strides), so memory does not grow with the
# dataset: 1/16 stride bins for the percentiles (reported as the bin's upper edge, so a reg_max
# chosen from them covers what it says), 1/4 stride bins in the json and the plot. The counts
# beyond the limits and the maxima are exact.
EDGE_BIN = 1 / 16
EDGE_PLOT_BIN = 0.25
# Box sizes: log-spaced bins, 8 per octave from 1 to 4096 px (and one bin below 1 px).
SIZE_BIN_EDGES = [0.0] + [float(2 ** (k / 8)) for k in range(12 * 8 + 1)]
ASSIGN_BATCH = 32  # images of one padded size assigned together (atss_assign is batched)


# ---------------------------------------------------------------------------------------------
# Counting


def _split_counts(ds: CocoDetection, split: str, ann_file: str) -> dict[str, Any]:
    """Images, objects (usable, non-crowd boxes: the training targets) and per-class counts of
    a whole split, from its annotations."""
    per_image = np.array(
        [len(ds._targets[i][1]) if i in ds._targets else 0 for i in sorted(ds.coco.imgs)],
        dtype=np.int64,
    )
    labels = [ds._targets[i][1] for i in ds.img_ids]
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    objects = np.bincount(labels, minlength=ds.num_classes)
    images_with = np.zeros(ds.num_classes, np.int64)
    for i in ds.img_ids:
        images_with[np.unique(ds._targets[i][1])] += 1
    crowd = sum(1 for a in ds.coco.anns.values() if a.get("iscrowd", 0))
    # COCO evaluation sizes every non-crowd gt by its `area` (a segment's area on COCO itself,
    # not the box's), in original pixels; dropped boxes (< 1 px) still count there.
    areas = [a["area"] for a in ds.coco.anns.values() if not a.get("iscrowd", 0)]
    areas = np.array(areas, dtype=np.float64)
    n = len(per_image)
    return {
        "split": split,
        "ann_file": str(ann_file),
        "images": n,
        "images_without_boxes": int((per_image == 0).sum()),
        "objects": int(per_image.sum()),
        "objects_per_image": {
            "mean": float(per_image.mean()) if n else 0.0,
            "max": int(per_image.max()) if n else 0,
            # histogram[k] = images with k objects
            "histogram": np.bincount(per_image).tolist() if n else [],
        },
        "crowd": crowd,
        "boxes_clipped": ds.box_stats["clipped"],
        "boxes_dropped": ds.box_stats["dropped"],
        "boxes_invalid": ds.box_stats["invalid"],
        "classes": [
            {"name": name, "category_id": int(cid), "objects": int(o), "images": int(m)}
            for name, cid, o, m in zip(ds.class_names, ds.cat_ids, objects, images_with)
        ],
        "coco_area": {
            "small": int((areas < COCO_SMALL).sum()),
            "medium": int(((areas >= COCO_SMALL) & (areas < COCO_MEDIUM)).sum()),
            "large": int((areas >= COCO_MEDIUM).sum()),
        },
    }


def _model_scale(split_cfg: Any, train: bool) -> tuple[tuple[int, int], str]:
    """The (long, short) resize target the statistics use, and a note on how it was chosen."""
    scale = tuple(split_cfg.img_scale)
    ms = split_cfg.ms_short_range if train else None
    if ms is None:
        return scale, f"single scale {scale[0]}x{scale[1]}"
    # TrainTransform draws the short side from ms and keeps the long side at max(img_scale).
    upper = (max(scale), int(ms[1]))
    return upper, (
        f"multi-scale training (short side {ms[0]}-{ms[1]}): the upper end {upper[0]}x{upper[1]}; "
        f"at the lower end boxes are up to {ms[0] / ms[1]:.2f}x this size"
    )


def _resized_boxes(
    ds: CocoDetection, img_ids: list[int], scale: tuple[int, int], divisor: int
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Each image's gt boxes float32 [N, 4] xyxy in the pixels of its keep-ratio resize to
    `scale` (as `transforms.resize`: scaled then clipped to the resized image), and its padded
    size (h, w): the resized size rounded up to `divisor`, where its anchors live."""
    boxes, pads = [], []
    for img_id in img_ids:
        info = ds.coco.imgs[img_id]
        width, height = int(info["width"]), int(info["height"])
        new_w, new_h, w_scale, h_scale = rescale_size(width, height, scale)
        b = ds._targets[img_id][0] * np.array([w_scale, h_scale, w_scale, h_scale], np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, new_w)
        b[:, 1::2] = b[:, 1::2].clip(0, new_h)
        boxes.append(b)
        pads.append((-(-new_h // divisor) * divisor, -(-new_w // divisor) * divisor))
    return boxes, pads


def _box_size(boxes: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of boxes [N, 4] xyxy: [N]."""
    wh = (boxes[:, 2:] - boxes[:, :2]).astype(np.float64).clip(min=0)
    return np.sqrt(wh[:, 0] * wh[:, 1])


# ---------------------------------------------------------------------------------------------
# ATSS assignment and edge distances


class _EdgeHistogram:
    """Edge distances (strides) per pyramid level, as histograms of EDGE_BIN bins, with exact
    counts beyond `limit` (reg_max * bin_width) and `clamp` (DFL's target clamp) and exact
    maxima. limit / clamp None: no limit (box representations without distributions)."""

    def __init__(self, num_levels: int, limit: float | None, clamp: float | None) -> None:
        self.limit, self.clamp = limit, clamp
        self.hist = [np.zeros(0, np.int64) for _ in range(num_levels)]
        self.beyond = np.zeros(num_levels, np.int64)
        self.clamped = np.zeros(num_levels, np.int64)
        self.max = np.zeros(num_levels)

    def add(self, level: int, d: np.ndarray) -> None:
        """d: the edge distances [P * 4] of positives of one level, in strides."""
        if d.size == 0:
            return
        counts = np.bincount((d / EDGE_BIN).astype(np.int64))
        h = self.hist[level]
        if len(counts) > len(h):
            h = np.concatenate([h, np.zeros(len(counts) - len(h), np.int64)])
        h[: len(counts)] += counts
        self.hist[level] = h
        self.max[level] = max(self.max[level], float(d.max()))
        if self.limit is not None:
            self.beyond[level] += int((d > self.limit).sum())
            self.clamped[level] += int((d > self.clamp).sum())

    def total(self) -> np.ndarray:
        """All levels' histograms summed."""
        out = np.zeros(max(len(h) for h in self.hist), np.int64)
        for h in self.hist:
            out[: len(h)] += h
        return out


def _percentiles(hist: np.ndarray, max_value: float) -> dict[str, float | None]:
    """p50 / p90 / p99 / max of a histogram of EDGE_BIN bins; each percentile is its bin's
    upper edge (at most the exact maximum), so it is never under the true value."""
    total = int(hist.sum())
    if total == 0:
        return {**{f"p{q}": None for q in PERCENTILES}, "max": None}
    cum = np.cumsum(hist)
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        idx = int(np.searchsorted(cum, max(math.ceil(q / 100 * total), 1)))
        out[f"p{q}"] = round(min((idx + 1) * EDGE_BIN, max_value), 4)
    out["max"] = round(max_value, 4)
    return out


def _coarse(hist: np.ndarray) -> list[int]:
    """A histogram of EDGE_BIN bins re-binned to EDGE_PLOT_BIN bins."""
    k = round(EDGE_PLOT_BIN / EDGE_BIN)
    padded = np.concatenate([hist, np.zeros(-len(hist) % k, np.int64)])
    return padded.reshape(-1, k).sum(1).tolist()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
@_one_thread()
def _assign_all(
    boxes: list[np.ndarray],
    pads: list[tuple[int, int]],
    strides: list[int],
    anchor_scale: float,
    topk: int,
    edges: _EdgeHistogram,
) -> np.ndarray:
    """Runs the ATSS assignment on every image and feeds the positives' edge distances into
    `edges`.

    boxes: per image, gt boxes [N_i, 4] xyxy in resized pixels; pads: per image, its padded
    size (h, w). Each image is assigned as if alone in its batch: a grid of ceil(h / s) x
    ceil(w / s) locations per level of stride s, anchors of side anchor_scale * s, all valid
    (what `GFL.assign` does with the image's own pad_size). Images of one padded size share
    the grid and are assigned ASSIGN_BATCH at a time.
    Returns the positives of every gt per level: int64 [sum N_i, L], gts in input order.

    Runs on one thread: its tensors are small, and intra-op threads only add overhead (with
    the cores busy, e.g. by a training, 100x on some ops).
    """
    num_levels = len(strides)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in boxes])])
    pos_per_gt = np.zeros((int(offsets[-1]), num_levels), np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (b, pad) in enumerate(zip(boxes, pads)):
        if len(b):
            groups.setdefault(pad, []).append(k)
    for (ph, pw), members in groups.items():
        sizes = [(-(-ph // s), -(-pw // s)) for s in strides]
        points, point_strides = grid_points(sizes, strides)
        anchors = square_anchors(points, point_strides, anchor_scale)
        num_level = [h * w for h, w in sizes]
        level_of = torch.repeat_interleave(torch.arange(num_levels), torch.tensor(num_level))
        for start in range(0, len(members), ASSIGN_BATCH):
            chunk = members[start : start + ASSIGN_BATCH]
            g = max(len(boxes[k]) for k in chunk)
            gt = torch.zeros(len(chunk), g, 4)
            valid = torch.zeros(len(chunk), g, dtype=torch.bool)
            for i, k in enumerate(chunk):
                gt[i, : len(boxes[k])] = torch.from_numpy(boxes[k])
                valid[i, : len(boxes[k])] = True
            assigned, _ = atss_assign(anchors, num_level, gt, valid, topk, sizes)  # [B, A]
            pb, pa = (assigned >= 0).nonzero(as_tuple=True)
            gi = assigned[pb, pa]
            lvl = level_of[pa]
            # In strides of each positive's level, as GFL.losses computes the DFL targets.
            s = point_strides[pa, None]
            dist = bbox2distance(points[pa] / s, gt[pb, gi] / s).numpy()  # [P, 4]
            lvl_np = lvl.numpy()
            for level in range(num_levels):
                edges.add(level, dist[lvl_np == level].reshape(-1))
            row = torch.from_numpy(offsets[np.asarray(chunk)])[pb] + gi
            np.add.at(pos_per_gt, (row.numpy(), lvl_np), 1)
    return pos_per_gt


# ---------------------------------------------------------------------------------------------
# The splits, the model, the sample


def _build_split(cfg: Any, name: str, classes: list[str] | None) -> CocoDetection:
    d = cfg.data
    return build_dataset(getattr(d, name), name == "train", d.skip_bad_images, classes)


def _other_split(
    cfg: Any, name: str, classes: list[str] | None
) -> tuple[CocoDetection | None, dict[str, Any]]:
    """The split that only gets its counts, or (None, its error): it is secondary here, so a
    missing or broken file is reported rather than fatal."""
    try:
        ds = _build_split(cfg, name, classes)
    except (OSError, ValueError) as e:
        return None, {"split": name, "ann_file": getattr(cfg.data, name).ann_file, "error": str(e)}
    return ds, _split_counts(ds, name, getattr(cfg.data, name).ann_file)


def _model_geometry(cfg: Any, num_classes: int) -> dict[str, Any]:
    """Strides, anchors, topk and the box representation of the config's model, built on the
    CPU with the dataset's class count and no pretrained weights (nothing is downloaded, the
    model is not run)."""
    m = copy.deepcopy(cfg.model)
    m.num_classes = num_classes
    m.backbone.pretrained = None
    model = build_model(m)
    box = model.head.box
    return {
        "strides": [int(s) for s in model.strides],
        "anchor_scale": float(model.assigner.anchor_scale),
        "anchor_sides": [float(model.assigner.anchor_scale * s) for s in model.strides],
        "topk": int(model.assigner.topk),
        "box": box.name,
        "reg_max": int(model.head.reg_max),
        "bin_width": float(box.bin_width) if hasattr(box, "bin_width") else None,
        "extra_levels": int(cfg.model.neck.extra_levels),
    }


def _sample(img_ids: list[int], max_images: int | None) -> list[int]:
    """At most max_images of img_ids: a seeded random sample, kept in dataset order."""
    if max_images is None or max_images >= len(img_ids):
        return list(img_ids)
    idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(img_ids), max_images, False))
    return [img_ids[i] for i in idx]


def _level_names(geo: dict) -> list[str]:
    """P3, P4, ... from the strides (stride 2^k is level Pk)."""
    return [f"P{round(math.log2(s))}" for s in geo["strides"]]


def _fit(
    edges: _EdgeHistogram,
    geo: dict,
    extra: dict | None,
) -> tuple[dict[str, Any], str]:
    """The edge-distance fit and the suggestion for it."""
    n, bw = geo["reg_max"], geo["bin_width"]
    total = int(sum(int(h.sum()) for h in edges.hist))
    beyond = int(edges.beyond.sum())
    share = beyond / total if total else 0.0
    p99 = _percentiles(edges.total(), float(edges.max.max()))["p99"]
    fit: dict[str, Any] = {"beyond_share": share, "threshold": BEYOND_LIMIT}
    if total == 0:
        fit["status"] = "no_positives"
        return fit, "no positive locations: nothing to fit (no usable boxes?)"
    limit = f"reg_max {n} x bin_width {bw:g} = {n * bw:g} strides"
    if share <= BEYOND_LIMIT:
        fit["status"] = "fits"
        return fit, (
            f"the configuration fits: {100 * share:.2f} % of edge distances lie beyond {limit} "
            f"(99 % are within {p99:.2f} strides)"
        )
    fit["status"] = "too_small"
    # Smallest n whose DFL clamp (n - 0.1) * bin_width still covers the 99th percentile.
    need = max(n + 1, math.ceil(p99 / bw + 0.1 - 1e-9))
    fit["reg_max_for_p99"] = need
    text = (
        f"{100 * share:.1f} % of edge distances lie beyond {limit}: set model.head.reg_max: "
        f"{need} (covers 99 % of edges, with bin_width {bw:g})"
    )
    if extra is not None:
        fit["extra_level"] = extra
        key = f"model.neck.extra_levels: {extra['extra_levels']}"
        if extra["beyond_share"] <= BEYOND_LIMIT:
            text += (
                f" or {key} (a stride-{extra['stride']} level; leaves "
                f"{100 * extra['beyond_share']:.2f} % beyond reg_max {n})"
            )
        else:
            text += (
                f"; one more level ({key}) would still leave "
                f"{100 * extra['beyond_share']:.1f} % beyond reg_max {n}"
            )
    return fit, text


def _unassigned(
    boxes: list[np.ndarray],
    pads: list[tuple[int, int]],
    unassigned: np.ndarray,
    sizes: np.ndarray,
    geo: dict,
    split: str,
) -> tuple[dict[str, Any], str]:
    """The gts that get no positive location, and why, with a note when they are many.

    boxes / pads: the analysed images' resized gts and padded sizes (as `_assign_all`);
    unassigned [G] bool and sizes [G] (sqrt(w * h)) over their gts in order. Each unassigned gt
    is assigned again alone in its image: with positives then, it lost its locations to
    overlapping gts of higher IoU (ATSS step 5); without, no candidate passes the IoU
    threshold (mean + std of its candidates' IoUs) with its centre inside the gt: tiny gts
    contain no location, and with few levels the threshold can exceed every candidate's IoU.
    """
    idx = np.where(unassigned)[0]
    img_of = np.repeat(np.arange(len(boxes)), [len(b) for b in boxes])
    flat = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    no_limit = _EdgeHistogram(len(geo["strides"]), None, None)
    alone = _assign_all(
        [flat[g][None] for g in idx],
        [pads[img_of[g]] for g in idx],
        geo["strides"],
        geo["anchor_scale"],
        geo["topk"],
        no_limit,
    )
    lost = alone.sum(1) > 0
    never = sizes[idx][~lost]
    out: dict[str, Any] = {
        "gts": len(idx),
        "share": len(idx) / len(unassigned) if len(unassigned) else 0.0,
        "median_size": float(np.median(sizes[idx])) if len(idx) else None,
        "max_size": float(sizes[idx].max()) if len(idx) else None,
        "lost_to_overlaps": int(lost.sum()),
        "none_alone": len(never),
        "none_alone_median_size": float(np.median(never)) if len(never) else None,
    }
    if out["share"] <= UNASSIGNED_LIMIT:
        return out, ""
    note = (
        f"{100 * out['share']:.1f} % of gts get no positive location (median "
        f"{out['median_size']:.1f} px): {out['lost_to_overlaps']} lose theirs to overlapping "
        f"gts, {len(never)} get none even alone"
    )
    if len(never):
        med, s0 = float(np.median(never)), geo["strides"][0]
        if med < 2 * s0:
            note += (
                f" (median {med:.1f} px, small for the finest grid's spacing of {s0} px: a "
                f"larger data.{split}.img_scale would give them locations)"
            )
        else:
            note += (
                f" (median {med:.1f} px: no candidate reaches ATSS's IoU threshold, mean + std "
                f"of the candidates' IoUs, which happens with few pyramid levels: "
                f"{len(geo['strides'])} here)"
            )
    return out, note


# ---------------------------------------------------------------------------------------------
# The whole computation, step by step


def _read_splits(cfg: Any, split: str) -> tuple[CocoDetection, dict, dict, list[str]]:
    """The analysed split's dataset and counts, the other split's counts (or its error), and
    the warnings about the pair (category ids that differ, model.num_classes)."""
    d = cfg.data
    warnings: list[str] = []
    # The training split first either way: a VOC val split takes its class order.
    if split == "train":
        ds = _build_split(cfg, "train", d.classes)
        other_ds, other = _other_split(cfg, "val", ds.class_names)
    else:
        other_ds, other = _other_split(cfg, "train", d.classes)
        ds = _build_split(cfg, "val", other_ds.class_names if other_ds else d.classes)
    if other_ds is not None and other_ds.cat_ids != ds.cat_ids:
        warnings.append(
            f"the train and val splits have different category ids ({len(ds.cat_ids)} vs "
            f"{len(other_ds.cat_ids)} categories): training refuses them"
        )
    counts = _split_counts(ds, split, getattr(d, split).ann_file)
    n_cfg = cfg.model.num_classes
    if n_cfg is not None and n_cfg != ds.num_classes:
        warnings.append(
            f"model.num_classes is {n_cfg} but the {split} split has {ds.num_classes} "
            "categories: training refuses it (the statistics use the dataset's count)"
        )
    return ds, counts, other, warnings


def _level_table(
    names: list[str],
    geo: dict,
    pos: np.ndarray,
    main: np.ndarray,
    edges: _EdgeHistogram,
    sizes: np.ndarray,
) -> list[dict[str, Any]]:
    """Per pyramid level: positives, the gts whose main level it is (and their sizes), and the
    edge distances of its positives. pos [G, L] positives per gt and level, main [G] each gt's
    main level (-1: none), sizes [G] sqrt(w * h) of the analysed gts."""
    general = edges.limit is not None
    num_pos, num_gts = int(pos.sum()), len(main)
    levels = []
    for k, name in enumerate(names):
        on = main == k
        hist = edges.hist[k]
        n_edges = int(hist.sum())
        beyond_share = None
        if general:
            beyond_share = int(edges.beyond[k]) / n_edges if n_edges else 0.0
        levels.append(
            {
                "level": name,
                "stride": geo["strides"][k],
                "anchor_side": geo["anchor_sides"][k],
                "positives": int(pos[:, k].sum()),
                "positive_share": int(pos[:, k].sum()) / num_pos if num_pos else 0.0,
                "gts": int(on.sum()),
                "gt_share": int(on.sum()) / num_gts if num_gts else 0.0,
                "positives_per_gt": float(pos[on].sum(1).mean()) if on.any() else None,
                "gt_size": {
                    "p5": float(np.percentile(sizes[on], 5)) if on.any() else None,
                    "median": float(np.median(sizes[on])) if on.any() else None,
                    "p95": float(np.percentile(sizes[on], 95)) if on.any() else None,
                },
                "edges": n_edges,
                "edges_beyond": int(edges.beyond[k]) if general else None,
                "beyond_share": beyond_share,
                "edge_percentiles": _percentiles(hist, float(edges.max[k])),
                "edge_histogram": _coarse(hist),
            }
        )
    return levels


def _size_stats(
    sizes: np.ndarray, sample_sizes: np.ndarray, main: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Box sizes of the whole split (percentiles, histogram) and of the analysed gts by their
    main level ("none": no positive)."""

    def histogram(values: np.ndarray) -> list[int]:
        return np.histogram(values, SIZE_BIN_EDGES + [np.inf])[0].tolist()

    by_level = {name: histogram(sample_sizes[main == k]) for k, name in enumerate(names)}
    by_level["none"] = histogram(sample_sizes[main < 0])
    return {
        "unit": "sqrt(w * h) in resized pixels",
        "count": len(sizes),
        "percentiles": {
            f"p{q}": float(np.percentile(sizes, q)) if len(sizes) else None
            for q in (1, 10, 50, 90, 99)
        },
        "max": float(sizes.max()) if len(sizes) else None,
        "bin_edges": SIZE_BIN_EDGES,  # the last bin is [4096, inf)
        "histogram": histogram(sizes),
        "by_level_histogram": by_level,
    }


def _edge_stats(
    edges: _EdgeHistogram, geo: dict, boxes: list[np.ndarray], pads: list[tuple[int, int]]
) -> tuple[dict[str, Any], str]:
    """The edge distances of every positive against the general distribution's range, the
    fit and the suggestion. When too many lie beyond it, the assignment runs again with one
    more pyramid level (the neck adds levels of twice the last stride) to see whether that
    level would fit instead."""
    total_edges = int(sum(int(h.sum()) for h in edges.hist))
    stats: dict[str, Any] = {
        "unit": "strides of each positive's level",
        "count": total_edges,
        "percentiles": _percentiles(edges.total(), float(edges.max.max()) if total_edges else 0),
        "histogram_bin": EDGE_PLOT_BIN,
    }
    if edges.limit is None:
        reason = (
            f"model.head.box is {geo['box']!r}: each edge is one value decoded as exp(x) "
            "strides, with no upper limit, so there is no distribution range to fit "
            "(the fit applies to box 'general')"
        )
        stats["fit"] = {"status": "skipped", "reason": reason}
        return stats, f"edge fit skipped: {reason}"
    limit, clamp = edges.limit, edges.clamp
    stats.update(
        {
            "limit": limit,
            "dfl_clamp": clamp,
            "beyond": int(edges.beyond.sum()),
            "beyond_share": int(edges.beyond.sum()) / total_edges if total_edges else 0.0,
            "clamped": int(edges.clamped.sum()),
            "clamped_share": int(edges.clamped.sum()) / total_edges if total_edges else 0.0,
        }
    )
    extra = None
    if total_edges and stats["beyond_share"] > BEYOND_LIMIT:
        log.info("data stats: assignment again with one more pyramid level")
        more = [*geo["strides"], geo["strides"][-1] * 2]
        edges2 = _EdgeHistogram(len(more), limit, clamp)
        _assign_all(boxes, pads, more, geo["anchor_scale"], geo["topk"], edges2)
        n2 = int(sum(int(h.sum()) for h in edges2.hist))
        extra = {
            "extra_levels": geo["extra_levels"] + 1,
            "stride": more[-1],
            "beyond_share": int(edges2.beyond.sum()) / n2 if n2 else 0.0,
            "p99": _percentiles(edges2.total(), float(edges2.max.max()))["p99"],
        }
    stats["fit"], suggestion = _fit(edges, geo, extra)
    return stats, suggestion


def check_arguments(max_images: int | None, split: str) -> None:
    """Raises a one-line ValueError for a `split` or `max_images` that compute_statistics
    does not take."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")


def compute_statistics(
    cfg: Any, max_images: int | None = None, split: str = "train"
) -> dict[str, Any]:
    """Statistics of a config's dataset split as GFL will train on it.

    cfg: a resolved config (gfldet.config.load_config); it is not modified. split: "train"
    (the default; its images without usable boxes are left out, as training does, and counted)
    or "val" (every image, sized by data.val.img_scale); the other split gets its counts only.
    max_images: analyse the assignment and the edge distances on at most this many images, a
    sample fixed by SAMPLE_SEED (None: all); counts and box sizes always cover the whole split.

    Returns a JSON-ready dict: "counts" (this split), "other_split" (counts or "error"),
    "model" (strides, anchor sides, topk, box, reg_max, bin_width, extra_levels), "scale",
    "sizes" (sqrt(w * h) percentiles and histogram in resized pixels, per main ATSS level too),
    "sample", "levels" (per pyramid level: positives, gts, gt sizes, edge distances),
    "unassigned" (gts without any positive, and why), "edges" (percentiles, share beyond
    reg_max, the fit), "notes" (on unassigned gts, when many), "suggestion" (the fit's verdict,
    with the config keys to change) and "warnings".
    """
    check_arguments(max_images, split)
    ds, counts, other, warnings = _read_splits(cfg, split)
    geo = _model_geometry(cfg, ds.num_classes)
    names = _level_names(geo)
    scale, scale_note = _model_scale(getattr(cfg.data, split), split == "train")
    divisor = int(cfg.data.size_divisor)

    # Sizes over the whole split (cheap); the assignment over the sample.
    img_ids = [i for i in ds.img_ids if len(ds._targets[i][0])]
    all_boxes, _ = _resized_boxes(ds, img_ids, scale, divisor)
    sizes = np.concatenate([_box_size(b) for b in all_boxes]) if all_boxes else np.zeros(0)
    sample_ids = _sample(ds.img_ids, max_images)
    analysed = [i for i in sample_ids if len(ds._targets[i][0])]
    log.info("data stats: ATSS assignment on %d images of %s", len(sample_ids), split)
    boxes, pads = _resized_boxes(ds, analysed, scale, divisor)
    general = geo["box"] == "general"
    limit = geo["reg_max"] * geo["bin_width"] if general else None
    clamp = (geo["reg_max"] - 0.1) * geo["bin_width"] if general else None
    edges = _EdgeHistogram(len(names), limit, clamp)
    pos = _assign_all(boxes, pads, geo["strides"], geo["anchor_scale"], geo["topk"], edges)
    sample_sizes = np.concatenate([_box_size(b) for b in boxes]) if boxes else np.zeros(0)

    # Each gt's main level: where most of its positives are (ties: the lower level).
    has_pos = pos.sum(1) > 0
    main = np.where(has_pos, pos.argmax(1), -1)
    levels = _level_table(names, geo, pos, main, edges, sample_sizes)
    edge_stats, suggestion = _edge_stats(edges, geo, boxes, pads)
    unassigned, note = _unassigned(boxes, pads, ~has_pos, sample_sizes, geo, split)
    return {
        "split": split,
        "counts": counts,
        "other_split": other,
        "model": geo,
        "level_names": names,
        "scale": {"img_scale": list(scale), "size_divisor": divisor, "note": scale_note},
        "sizes": _size_stats(sizes, sample_sizes, main, names),
        "sample": {
            "images": len(sample_ids),
            "of": len(ds.img_ids),
            "seed": SAMPLE_SEED if len(sample_ids) < len(ds.img_ids) else None,
            "gts": len(main),
            "positives": int(pos.sum()),
        },
        "levels": levels,
        "unassigned": unassigned,
        "edges": edge_stats,
        "notes": [note] if note else [],
        "suggestion": suggestion,
        "warnings": warnings,
    }
