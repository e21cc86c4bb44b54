"""`gfldet data stats`: a dataset seen the way GFL will see it, before any training.

`dataset_statistics(cfg, out_dir, max_images)` reads a config's training split (and the val
split's counts) and reports:

1. images, objects, objects per image and per class (crowd boxes excluded: they are not
   training targets), images without a usable box;
2. box sizes sqrt(w * h) in the pixels the model sees (the keep-ratio resize to
   `data.train.img_scale`), and COCO's small / medium / large split (area 32^2, 96^2 in original
   pixels, by each annotation's `area`, as COCO evaluation counts them);
3. the real ATSS assignment (`atss_assign` with the built model's strides, anchors and topk on
   every image's resized, padded size): positives and gts per pyramid level, gts without any
   positive;
4. GFL's own question: the edge distances (l, t, r, b) of every positive to its gt, in strides
   of its level, against the largest distance the general distribution can express,
   `reg_max * bin_width` strides (DFL clamps its targets just below, at
   `(reg_max - 0.1) * bin_width`). A share beyond it over 1 % gets a concrete suggestion: the
   `reg_max` that covers the 99th percentile, or one more pyramid level, whichever fits (the
   extra level is checked by running the assignment again with it).

`format_statistics(stats)` renders the result for the terminal; with an `out_dir` the result is
also written as `data_stats.json` with `class_histogram.png`, `box_sizes.png` and
`edge_distances.png`.

Nothing reads an image: sizes come from the annotation file, and the assignment runs on box
coordinates only. Measured on the 2-core development CPU (AMD EPYC, no GPU, shared with a
training at the time), the whole function with the annotations loaded and the model built:
0.5 s for the 2000 shapes images (256 x 256, 4.4 gts per image), 3.7-5.6 s for 10,000
COCO-sized images (resized to 1333 x 800, 7.3 gts per image, varied sizes), i.e. about 0.3 s
(shapes) and 0.4-0.6 s (COCO-sized) per 1000 images, of which about 1.5 s is a fixed cost
(building the R-50 model, reading the val split); the plots add about 2 s. So COCO's 118k
training images take about a minute plus the time to parse its 450 MB annotation file (not
measured here); `max_images` analyses a seeded sample (the counts and sizes always cover the
whole split: they cost next to nothing).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import write_json_atomic
from ..core.plots import new_figure, save_png
from ..model.atss import atss_assign
from ..model.box_ops import bbox2distance, grid_points, square_anchors
from ..model.build import build_model
from .coco import CocoDetection
from .loader import build_dataset
from .transforms import rescale_size

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
    per_image = np.array([len(ds._targets[i][1]) if i in ds._targets else 0
                          for i in sorted(ds.coco.imgs)], dtype=np.int64)  # fmt: skip
    labels = [ds._targets[i][1] for i in ds.img_ids]
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    objects = np.bincount(labels, minlength=ds.num_classes)
    images_with = np.zeros(ds.num_classes, np.int64)
    for i in ds.img_ids:
        images_with[np.unique(ds._targets[i][1])] += 1
    crowd = sum(1 for a in ds.coco.anns.values() if a.get("iscrowd", 0))
    # COCO evaluation sizes every non-crowd gt by its `area` (a segment's area on COCO itself,
    # not the box's), in original pixels; dropped boxes (< 1 px) still count there.
    areas = np.array([a["area"] for a in ds.coco.anns.values() if not a.get("iscrowd", 0)],
                     dtype=np.float64)  # fmt: skip
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
        new_w, new_h, w_scale, h_scale = rescale_size(int(info["width"]), int(info["height"]),
                                                      scale)  # fmt: skip
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
# The whole report


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
    alone = _assign_all([flat[g][None] for g in idx], [pads[img_of[g]] for g in idx],
                        geo["strides"], geo["anchor_scale"], geo["topk"],
                        _EdgeHistogram(len(geo["strides"]), None, None))  # fmt: skip
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


def dataset_statistics(
    cfg: Any, out_dir: Path | None, max_images: int | None = None, split: str = "train"
) -> dict[str, Any]:
    """Statistics of a config's dataset split as GFL will train on it (see the module
    docstring); also writes `data_stats.json` and three PNG plots when `out_dir` is given.

    cfg: a resolved config (gfldet.config.load_config); it is not modified. split: "train"
    (the default; its images without usable boxes are left out, as training does, and counted)
    or "val" (every image, sized by data.val.img_scale); the other split gets its counts only.
    max_images: analyse the assignment and the edge distances on at most this many images, a
    sample fixed by SAMPLE_SEED (None: all); counts and box sizes always cover the whole split.

    Cost on the 2-core development CPU: about 0.3 s per 1000 shapes images (256 x 256) and
    0.4-0.6 s per 1000 COCO-sized images (1333 x 800), everything included but the plots
    (about 2 s); see the module docstring.

    Returns a JSON-ready dict: "counts" (this split), "other_split" (counts or "error"),
    "model" (strides, anchor sides, topk, box, reg_max, bin_width, extra_levels), "scale",
    "sizes" (sqrt(w * h) percentiles and histogram in resized pixels, per main ATSS level too),
    "sample", "levels" (per pyramid level: positives, gts, gt sizes, edge distances),
    "unassigned" (gts without any positive, and why), "edges" (percentiles, share beyond
    reg_max, the fit), "notes" (on unassigned gts, when many), "suggestion" (the fit's verdict,
    with the config keys to change), "warnings" and "seconds".
    """
    t0 = time.perf_counter()
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    d = cfg.data
    train = split == "train"
    warnings: list[str] = []

    # The training split first either way: a VOC val split takes its class order.
    if train:
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

    geo = _model_geometry(cfg, ds.num_classes)
    names = _level_names(geo)
    scale, scale_note = _model_scale(getattr(d, split), train)
    divisor = int(d.size_divisor)

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
    num_pos = int(pos.sum())
    num_gts = len(main)
    levels = []
    for k, name in enumerate(names):
        on = main == k
        hist = edges.hist[k]
        n_edges = int(hist.sum())
        levels.append({
            "level": name,
            "stride": geo["strides"][k],
            "anchor_side": geo["anchor_sides"][k],
            "positives": int(pos[:, k].sum()),
            "positive_share": int(pos[:, k].sum()) / num_pos if num_pos else 0.0,
            "gts": int(on.sum()),
            "gt_share": int(on.sum()) / num_gts if num_gts else 0.0,
            "positives_per_gt": float(pos[on].sum(1).mean()) if on.any() else None,
            "gt_size": {
                "p5": float(np.percentile(sample_sizes[on], 5)) if on.any() else None,
                "median": float(np.median(sample_sizes[on])) if on.any() else None,
                "p95": float(np.percentile(sample_sizes[on], 95)) if on.any() else None,
            },
            "edges": n_edges,
            "edges_beyond": int(edges.beyond[k]) if general else None,
            "beyond_share": (int(edges.beyond[k]) / n_edges if n_edges else 0.0)
            if general else None,
            "edge_percentiles": _percentiles(hist, float(edges.max[k])),
            "edge_histogram": _coarse(hist),
        })  # fmt: skip
    unassigned = ~has_pos
    size_hist = np.histogram(sizes, SIZE_BIN_EDGES + [np.inf])[0]
    by_level = {
        name: np.histogram(sample_sizes[main == k], SIZE_BIN_EDGES + [np.inf])[0].tolist()
        for k, name in enumerate(names)
    }
    by_level["none"] = np.histogram(sample_sizes[unassigned], SIZE_BIN_EDGES + [np.inf])[0].tolist()

    total_edges = int(sum(int(h.sum()) for h in edges.hist))
    edge_stats: dict[str, Any] = {
        "unit": "strides of each positive's level",
        "count": total_edges,
        "percentiles": _percentiles(edges.total(), float(edges.max.max()) if total_edges else 0),
        "histogram_bin": EDGE_PLOT_BIN,
    }
    if general:
        edge_stats.update({
            "limit": limit,
            "dfl_clamp": clamp,
            "beyond": int(edges.beyond.sum()),
            "beyond_share": int(edges.beyond.sum()) / total_edges if total_edges else 0.0,
            "clamped": int(edges.clamped.sum()),
            "clamped_share": int(edges.clamped.sum()) / total_edges if total_edges else 0.0,
        })  # fmt: skip
        extra = None
        if total_edges and edge_stats["beyond_share"] > BEYOND_LIMIT:
            # Would one more level fit? The neck adds levels of twice the last stride.
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
        fit, suggestion = _fit(edges, geo, extra)
    else:
        reason = (
            f"model.head.box is {geo['box']!r}: each edge is one value decoded as exp(x) "
            "strides, with no upper limit, so there is no distribution range to fit "
            "(the fit applies to box 'general')"
        )
        fit, suggestion = {"status": "skipped", "reason": reason}, f"edge fit skipped: {reason}"
    edge_stats["fit"] = fit
    unassigned_stats, note = _unassigned(boxes, pads, unassigned, sample_sizes, geo, split)

    stats: dict[str, Any] = {
        "split": split,
        "counts": counts,
        "other_split": other,
        "model": geo,
        "level_names": names,
        "scale": {"img_scale": list(scale), "size_divisor": divisor, "note": scale_note},
        "sizes": {
            "unit": "sqrt(w * h) in resized pixels",
            "count": len(sizes),
            "percentiles": {
                f"p{q}": float(np.percentile(sizes, q)) if len(sizes) else None
                for q in (1, 10, 50, 90, 99)
            },
            "max": float(sizes.max()) if len(sizes) else None,
            "bin_edges": SIZE_BIN_EDGES,  # the last bin is [4096, inf)
            "histogram": size_hist.tolist(),
            "by_level_histogram": by_level,
        },
        "sample": {
            "images": len(sample_ids),
            "of": len(ds.img_ids),
            "seed": SAMPLE_SEED if len(sample_ids) < len(ds.img_ids) else None,
            "gts": num_gts,
            "positives": num_pos,
        },
        "levels": levels,
        "unassigned": unassigned_stats,
        "edges": edge_stats,
        "notes": [note] if note else [],
        "suggestion": suggestion,
        "warnings": warnings,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        plot_class_histogram(stats, out_dir / "class_histogram.png")
        plot_box_sizes(stats, out_dir / "box_sizes.png")
        plot_edge_distances(stats, out_dir / "edge_distances.png")
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    if out_dir is not None:
        write_json_atomic(stats, Path(out_dir) / "data_stats.json", indent=1)
    return stats


# ---------------------------------------------------------------------------------------------
# Text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _table(rows: list[list[str]], header: list[str], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def _counts_rows(splits: list[dict]) -> list[str]:
    """A table of the splits' counts; a split that could not be read gets its error."""
    rows, errors = [], []
    for c in splits:
        if "error" in c:
            errors.append(f"  {c['split']}: not read: {c['error']}")
            continue
        opi = c["objects_per_image"]
        rows.append([
            c["split"], str(c["images"]), str(c["images_without_boxes"]), str(c["objects"]),
            f"{opi['mean']:.2f}", str(opi["max"]), str(c["crowd"]),
            str(c["boxes_dropped"] + c["boxes_invalid"]),
        ])  # fmt: skip
    header = ["split", "images", "no usable box", "objects", "per image", "max", "crowd",
              "dropped"]  # fmt: skip
    return (_table(rows, header) if rows else []) + errors


def format_statistics(stats: dict[str, Any], max_classes: int = 20) -> str:
    """A terminal summary of `dataset_statistics`: counts, classes, sizes, the per-level ATSS
    table with the edge distances, and the suggestion last. With more than `max_classes`
    classes only the most and the least frequent ones are listed."""
    c, geo = stats["counts"], stats["model"]
    o = stats["other_split"]
    lines = [f"dataset: {c['ann_file']} ({c['split']}), {o.get('ann_file', '-')} ({o['split']})"]
    lines += _counts_rows([c, o])
    lines.append(
        "  objects: usable boxes, crowd excluded; images without a usable box are "
        + ("left out of training" if c["split"] == "train" else "kept")
    )
    ca = c["coco_area"]
    n_area = max(sum(ca.values()), 1)
    lines.append(
        f"  COCO sizes (area in original pixels): small {_pct(ca['small'] / n_area)}, "
        f"medium {_pct(ca['medium'] / n_area)}, large {_pct(ca['large'] / n_area)}"
    )

    classes = sorted(c["classes"], key=lambda r: -r["objects"])
    total = max(c["objects"], 1)
    rows = [[r["name"], str(r["objects"]), _pct(r["objects"] / total), str(r["images"])]
            for r in classes]  # fmt: skip
    if len(rows) > max_classes:
        half = max_classes // 2
        rows = [*rows[:half], [f"... {len(rows) - 2 * half} more", "", "", ""], *rows[-half:]]
    lines += ["", f"classes ({len(classes)}), most objects first:"]
    lines += _table(rows, ["class", "objects", "share", "images"])

    s = stats["sizes"]
    p = s["percentiles"]
    lines += [
        "",
        f"box sizes sqrt(w*h) in pixels the model sees ({stats['scale']['note']}):",
        "  " + "  ".join(f"{k} {_num(v)}" for k, v in p.items()) + f"  max {_num(s['max'])}",
    ]

    smp = stats["sample"]
    sample = f"{smp['images']} images" + (
        f" (seeded sample of {smp['of']})" if smp["seed"] is not None else ""
    )
    lines += [
        "",
        f"ATSS assignment on {sample}: topk {geo['topk']}, anchors {geo['anchor_scale']:g} x "
        f"stride, {smp['gts']} gts, {smp['positives']} positives",
    ]
    e = stats["edges"]
    general = "limit" in e
    legend = (
        "(gts: by the level of most of their positives, with their median size in px; "
        "p50 p99 max: edge distances in strides"
        + (f"; > {e['limit']:g}: beyond reg_max x bin_width)" if general else ")")
    )
    lines.append(textwrap.fill(legend, 100, initial_indent="  ", subsequent_indent="   "))
    header = ["level", "stride", "anchor", "positives", "gts", "size", "pos/gt", "p50", "p99",
              "max"]  # fmt: skip
    if general:
        header.append(f"> {e['limit']:g}")
    rows = []
    for lv in stats["levels"]:
        ep = lv["edge_percentiles"]
        row = [
            lv["level"], str(lv["stride"]), f"{lv['anchor_side']:g}",
            f"{lv['positives']} ({_pct(lv['positive_share'])})",
            f"{lv['gts']} ({_pct(lv['gt_share'])})", _num(lv["gt_size"]["median"]),
            _num(lv["positives_per_gt"]), _num(ep["p50"], ".2f"), _num(ep["p99"], ".2f"),
            _num(ep["max"], ".2f"),
        ]  # fmt: skip
        if general:
            row.append(f"{100 * lv['beyond_share']:.2f} %" if lv["edges"] else "-")
        rows.append(row)
    lines += _table(rows, header)
    u = stats["unassigned"]
    line = f"  no positive: {u['gts']} gts ({_pct(u['share'])})"
    if u["gts"]:
        line += f", median size {u['median_size']:.1f} px, largest {u['max_size']:.1f} px"
    lines.append(line)
    if u["gts"]:
        lines.append(
            f"    {u['lost_to_overlaps']} lost their locations to overlapping gts, "
            f"{u['none_alone']} get none even alone"
        )

    ep = e["percentiles"]
    lines += [
        "",
        "edge distances (l, t, r, b of each positive, in strides): "
        + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in ep.items()),
    ]
    if general:
        lines += [
            f"  box 'general': reg_max {geo['reg_max']} x bin_width {geo['bin_width']:g} = "
            f"{e['limit']:g} strides",
            f"  beyond it: {e['beyond']} of {e['count']} ({100 * e['beyond_share']:.2f} %); "
            f"over DFL's target clamp {e['dfl_clamp']:g}: {100 * e['clamped_share']:.2f} %",
        ]
    lines.append("")
    for w in stats["warnings"]:
        lines.append(_wrap(f"warning: {w}"))
    for n in stats["notes"]:
        lines.append(_wrap(f"note: {n}"))
    lines.append(_wrap(f"suggestion: {stats['suggestion']}"))
    return "\n".join(lines)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False)


# ---------------------------------------------------------------------------------------------
# Plots (gfldet.core.plots' figures: no display, no pyplot state)


def plot_class_histogram(stats: dict[str, Any], path: str | Path) -> Path:
    """Horizontal bars: objects per class (most first), with their counts. Writes a PNG."""
    c = stats["counts"]
    classes = sorted(c["classes"], key=lambda r: -r["objects"])
    fig = new_figure(7, max(2.5, 0.22 * len(classes) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    counts = [r["objects"] for r in classes]
    ax.barh(y, counts, color="tab:blue")
    for yi, n in zip(y, counts):
        ax.annotate(str(n), (n, yi), xytext=(2, 0), textcoords="offset points", va="center",
                    fontsize=7)  # fmt: skip
    ax.set_yticks(y, [r["name"] for r in classes], fontsize=7 if len(classes) > 30 else 9)
    ax.invert_yaxis()
    ax.set(xlabel="objects (crowd excluded)",
           title=f"{stats['split']}: {c['objects']} objects in {c['images']} images")  # fmt: skip
    ax.margins(x=0.12)
    return save_png(fig, Path(path))


def plot_box_sizes(stats: dict[str, Any], path: str | Path) -> Path:
    """Box sizes sqrt(w * h) in resized pixels, log scale: all gts of the split (left), and the
    analysed ones by the level ATSS gives most of their positives (right). Both mark the
    anchor sides (dashed: a gt of that size matches the level's anchor best) and the geometric
    means between them (dotted: about where ATSS moves gts to the next level). Writes a PNG."""
    from matplotlib import colormaps

    s, geo, names = stats["sizes"], stats["model"], stats["level_names"]
    edges = np.array(s["bin_edges"][1:])  # from 1 px; the < 1 px bin is drawn at 1 px
    centers = np.sqrt(edges[:-1] * edges[1:])
    widths = np.diff(edges)

    def hist(counts: list[int]) -> np.ndarray:
        c = np.asarray(counts[1:-1], dtype=np.float64)
        c[0] += counts[0]  # sizes < 1 px into the first bin
        return c

    fig = new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    ax1.bar(centers, hist(s["histogram"]), width=widths, color="0.55", align="center")
    ax1.set(title=f"{stats['split']}: {s['count']} gts, {stats['scale']['note'][:60]}",
            ylabel="gts")  # fmt: skip
    bottom = np.zeros(len(centers))
    for k, name in enumerate([*names, "none"]):
        h = hist(s["by_level_histogram"][name])
        color = colormaps["tab10"](k % 10) if name != "none" else "black"
        label = f"{name} (stride {geo['strides'][k]})" if name != "none" else "no positive"
        ax2.bar(centers, h, width=widths, bottom=bottom, color=color, label=label)
        bottom += h
    smp = stats["sample"]
    ax2.set(title=f"main ATSS level of {smp['gts']} gts ({smp['images']} images)")
    ax2.legend(fontsize=7, loc="upper right")
    sides = geo["anchor_sides"]
    right = max(s["max"] or 1.0, sides[-1]) * 1.5
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlim(1, right)
        ax.set_xlabel("sqrt(w * h), resized pixels")
        for k, a in enumerate(sides):
            ax.axvline(a, color="tab:red", ls="--", lw=0.8)
            ax.annotate(f"{names[k]} {a:g}", (a, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="tab:red")  # fmt: skip
        for a, b in zip(sides, sides[1:]):
            ax.axvline(math.sqrt(a * b), color="tab:red", ls=":", lw=0.8)
    return save_png(fig, Path(path))


def plot_edge_distances(stats: dict[str, Any], path: str | Path) -> Path:
    """Histograms of the positives' edge distances in strides, one line per level (log
    counts), with the reg_max * bin_width limit and DFL's clamp for box 'general'. Writes a
    PNG."""
    from matplotlib import colormaps

    e, geo = stats["edges"], stats["model"]
    fig = new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    top = 1.0
    for k, lv in enumerate(stats["levels"]):
        h = np.asarray(lv["edge_histogram"], dtype=np.float64)
        if not h.sum():
            continue
        x = np.arange(len(h) + 1) * e["histogram_bin"]
        ax.stairs(h, x, color=colormaps["tab10"](k % 10), lw=1.3,
                  label=f"{lv['level']} ({lv['edges']} edges)")  # fmt: skip
        top = max(top, x[-1])
    if "limit" in e:
        ax.axvline(e["limit"], color="tab:red", lw=1.5,
                   label=f"reg_max x bin_width = {e['limit']:g} ({100 * e['beyond_share']:.2f} % "
                         "beyond)")  # fmt: skip
        ax.axvline(e["dfl_clamp"], color="tab:red", ls=":", lw=1, label="DFL target clamp")
        top = max(top, e["limit"] * 1.1)
        title = f"edge distances vs the general distribution (box '{geo['box']}')"
    else:
        title = f"edge distances (box '{geo['box']}': no distribution limit)"
    ax.set_yscale("log")
    ax.set(xlim=(0, top), xlabel="edge distance (l, t, r, b) in strides of the level",
           ylabel="edges", title=title)  # fmt: skip
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    return save_png(fig, Path(path))
