"""Deterministic synthetic COCO-format "shapes" detection dataset (gfldet's embedded demo data).

Every image has a textured, noisy background (gradient, low-frequency colour blobs, clutter lines
that are not objects) and 0..``max_objects`` shapes of random class, size (longest side uniform in
square root between min and max size), colour, aspect ratio, rotation and fill style (solid,
textured or outline-only). About half the objects are COCO-small by visible area. Objects are
painted in order and may occlude earlier ones, but a placement that would leave an earlier object
less than 50% visible is rejected. Boxes and areas describe the *visible* pixels only.

Each image uses its own generator ``np.random.default_rng([seed, split_index, image_index])``, so
the output is byte-identical for identical arguments, whatever the number of worker processes.

CLI: ``python -m gfldet.data.synth --out data/shapes``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ellipse")
CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 5, 7, 9)  # deliberately non-contiguous
SPLITS: tuple[str, ...] = ("train", "val")  # split index = position in this tuple
IMAGE_ID_OFFSET = 1000  # image id = IMAGE_ID_OFFSET + image index (ids deliberately not from 0)
GENERATOR_VERSION = 4  # bump whenever rendering changes: invalidates cached datasets
EMPTY_PROB = 0.02  # fraction of background-only images
MIN_VISIBLE = 0.5  # every object keeps at least this fraction of its pixels visible
MIN_BOX_SIDE = 4  # objects whose visible box is thinner than this are dropped
MIN_CONTRAST = 80.0  # wanted RGB distance between an object's colour and what lies beneath it
PLACEMENT_TRIES = 8
_SHIFT = 4  # fractional bits used for cv2 polygon drawing
MARKER = ".gfldet-synth"  # marks a folder this generator wrote (and may write into again)
_IMAGE_NAME = re.compile(r"\d{6}\.jpg")  # the image files it writes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth gradient + low-frequency colour blobs (one upsampled k x k grid) + clutter lines."""
    k = int(rng.integers(3, 8))
    t = np.linspace(0, 1, k, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = t[None, :, None] * np.cos(angle) + t[:, None, None] * np.sin(angle)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    grid = c0 + (c1 - c0) * (ramp - ramp.min()) / (ramp.max() - ramp.min())
    grid += rng.standard_normal((k, k, 3), dtype=np.float32) * rng.uniform(10, 40)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # clutter: open polylines, never annotated
        pts = rng.integers(0, size, (int(rng.integers(2, 4)), 2)).astype(np.int32)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.polylines(img, [pts], False, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """Outline of shape ``name`` as (N, 2) float points around the origin, before rotation."""
    if name in ("circle", "ellipse"):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ry = 1.0 if name == "circle" else rng.uniform(0.35, 0.6)
        return np.stack([np.cos(t), ry * np.sin(t)], 1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if name == "triangle":
        h = rng.uniform(1.2, 2.4)  # height (base is 2): aspect ratio 0.6..1.2, skewed apex
        return np.array([[-1, h / 2], [1, h / 2], [rng.uniform(-0.3, 0.3), -h / 2]])
    if name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if name == "cross":
        w = rng.uniform(0.22, 0.38)  # arm half-width
        return np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ]
        )
    raise ValueError(f"unknown shape {name!r}")


def _shape_mask(
    name: str, rng: np.random.Generator, img_size: int, min_size: int, max_size: int
) -> tuple[np.ndarray, tuple[slice, slice], str]:
    """Sample rotation, size, position and fill style of one shape.

    Returns (bool mask of the shape's bounding crop, (rows, cols) slices of that crop, style).
    """
    pts = _unit_polygon(name, rng)
    a = rng.uniform(0, 2 * np.pi) if name != "circle" else 0.0
    pts = pts @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    hi = max(min(max_size, img_size - 3), 1)
    lo = min(max(min_size, 1), hi)
    # Uniform in sqrt(side): small shapes are common (~30% under 32 px) without dominating.
    longest = rng.uniform(math.sqrt(lo), math.sqrt(hi)) ** 2
    pts = (pts - pts.min(0)) * (longest / np.ptp(pts, 0).max()) + rng.uniform(0, 1, 2)
    w, h = (int(v) + 2 for v in pts.max(0))
    poly = [np.round(pts * (1 << _SHIFT)).astype(np.int32)]
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, poly, 1, cv2.LINE_8, _SHIFT)
    style = "solid"
    if longest >= 24 and rng.random() < 0.1:  # outline-only: inner band of the filled shape
        band = np.zeros_like(mask)
        thickness = 2 * max(2, round(longest * rng.uniform(0.06, 0.12)))
        cv2.polylines(band, poly, True, 1, thickness, cv2.LINE_8, _SHIFT)
        mask &= band
        style = "outline"
    elif longest >= 20 and rng.random() < 0.2:  # stripes/checker would hide tiny shapes
        style = "texture"
    x0, y0 = int(rng.integers(0, img_size - w + 1)), int(rng.integers(0, img_size - h + 1))
    return mask.astype(bool), (slice(y0, y0 + h), slice(x0, x0 + w)), style


def _place(
    rng: np.random.Generator,
    name: str,
    owner: np.ndarray,
    visible: list[int],
    full_areas: list[int],
    img_size: int,
    min_size: int,
    max_size: int,
) -> tuple[np.ndarray, tuple[slice, slice], str, np.ndarray] | None:
    """Try up to PLACEMENT_TRIES random placements of shape ``name``; return the first one that
    leaves every earlier object at least MIN_VISIBLE visible as (mask, slices, style, pixels lost
    per earlier object), or None."""
    for _ in range(PLACEMENT_TRIES):
        mask, sl, style = _shape_mask(name, rng, img_size, min_size, max_size)
        covered = owner[sl][mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(full_areas))
        if all(v - c >= MIN_VISIBLE * f for v, c, f in zip(visible, lost, full_areas)):
            return mask, sl, style, lost
    return None


def _paint(
    rng: np.random.Generator,
    canvas: np.ndarray,
    under: np.ndarray,
    colours: list,
    mask: np.ndarray,
    style: str,
) -> np.ndarray:
    """Paint ``mask`` onto the ``canvas`` crop with a colour contrasting with what lies beneath
    (``under``: owner ids of the crop); return the colour."""
    ys, xs = np.nonzero(mask)
    below = under[ys, xs]
    refs = [colours[k] for k in np.unique(below[below >= 0])]
    cy, cx = ys.mean(), xs.mean()
    for quadrant in range(4):  # local background means, robust to gradients under big objects
        sel = (below < 0) & ((ys < cy) == bool(quadrant & 1)) & ((xs < cx) == bool(quadrant & 2))
        if sel.any():
            refs.append(canvas[ys[sel], xs[sel]].mean(0))
    refs_arr = np.array(refs, dtype=np.float32).reshape(-1, 3)
    colour, best_d = np.zeros(3, np.float32), -1.0
    for _ in range(20):  # random colour >= MIN_CONTRAST from every reference (else the best)
        c = rng.integers(0, 256, 3).astype(np.float32)
        d = float(np.linalg.norm(refs_arr - c, axis=1).min())
        if d > best_d:
            colour, best_d = c, d
        if d >= MIN_CONTRAST:
            break
    if style == "texture":  # stripes or checker of the colour and a lighter/darker variant
        period, a = int(rng.integers(3, 9)), rng.uniform(0, np.pi)
        if rng.random() < 0.5:
            phase = ((xs * np.cos(a) + ys * np.sin(a)) // period).astype(int) % 2
        else:
            phase = (xs // period + ys // period) % 2
        other = colour * 0.5 if colour.mean() > 127 else colour + (255 - colour) * 0.6
        canvas[ys, xs] = np.where(phase[:, None] == 1, other, colour).astype(np.uint8)
    else:
        canvas[ys, xs] = colour.astype(np.uint8)
    return colour


def render_sample(
    seed: int,
    split_index: int,
    image_index: int,
    img_size: int = 256,
    min_size: int = 8,
    max_size: int = 160,
    max_objects: int = 8,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one image deterministically.

    Returns ``(image, objects)``: an RGB uint8 (img_size, img_size, 3) image (before JPEG coding)
    and one dict per kept object with ``category_id``, ``bbox`` ([x, y, w, h] floats, tight box of
    the visible pixels), ``area`` (visible pixel count), ``full_area`` (pixel count before
    occlusion) and ``mask`` (bool image-sized mask of the visible pixels).
    """
    rng = np.random.default_rng([seed, split_index, image_index])
    n = 0 if rng.random() < EMPTY_PROB else int(rng.integers(1, max_objects + 1))
    canvas = _background(rng, img_size)
    owner = np.full((img_size, img_size), -1, np.int16)  # index of the object on top, -1 = none
    objs: list[tuple[int, tuple[slice, slice], int]] = []  # (class, crop slices, full area)
    visible: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        placed = _place(
            rng, CLASSES[cls], owner, visible, [o[2] for o in objs], img_size, min_size, max_size
        )
        if placed is None:
            continue
        mask, sl, style, lost = placed
        colours.append(_paint(rng, canvas[sl], owner[sl], colours, mask, style))
        visible = [v - c for v, c in zip(visible, lost)] + [int(mask.sum())]
        owner[sl][mask] = len(objs)
        objs.append((cls, sl, int(mask.sum())))
    img = canvas.astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.0))
    noise = rng.standard_normal((img_size, img_size, 1), dtype=np.float32) * rng.uniform(2, 10)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)  # luminance noise
    objects = []
    for k, (cls, sl, full_area) in enumerate(objs):
        ys, xs = np.nonzero(owner[sl] == k)
        x0, y0 = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            continue
        mask = np.zeros((img_size, img_size), bool)
        mask[sl] = owner[sl] == k
        x0, y0 = x0 + sl[1].start, y0 + sl[0].start
        objects.append(
            {
                "category_id": CATEGORY_IDS[cls],
                "bbox": [float(x0), float(y0), float(w), float(h)],
                "area": len(xs),
                "full_area": full_area,
                "mask": mask,
            }
        )
    return img, objects


def _write_image(task: tuple) -> list[dict[str, Any]]:
    """Pool worker: render image ``task`` and write it as JPEG; return its objects sans masks."""
    img_dir, split_index, index, seed, img_size, min_size, max_size, max_objects = task
    img, objects = render_sample(
        seed, split_index, index, img_size, min_size, max_size, max_objects
    )
    cv2.imwrite(
        str(Path(img_dir) / f"{index:06d}.jpg"),
        np.ascontiguousarray(img[..., ::-1]),
        [cv2.IMWRITE_JPEG_QUALITY, 95],
    )  # RGB -> BGR for cv2
    return [{k: o[k] for k in ("category_id", "bbox", "area")} for o in objects]


def _write_split(
    out_dir: Path, split_index: int, num_images: int, args: dict[str, int], pool: Any
) -> None:
    """Write the images and the COCO annotation file of one split. Only files the generator
    writes are replaced or removed (images of a previous, larger generation); anything else in
    the folder stays."""
    split = SPLITS[split_index]
    img_dir = out_dir / split / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for p in img_dir.glob("*.jpg"):
        if _IMAGE_NAME.fullmatch(p.name) and int(p.stem) >= num_images:
            p.unlink()
    tasks = [
        (
            str(img_dir),
            split_index,
            i,
            args["seed"],
            args["img_size"],
            args["min_size"],
            args["max_size"],
            args["max_objects"],
        )
        for i in range(num_images)
    ]
    results = pool.imap(_write_image, tasks, chunksize=16) if pool else map(_write_image, tasks)
    images, annotations = [], []
    for i, objects in enumerate(results):
        image_id = IMAGE_ID_OFFSET + i
        images.append(
            {
                "id": image_id,
                "file_name": f"{i:06d}.jpg",
                "width": args["img_size"],
                "height": args["img_size"],
            }
        )
        for obj in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, **obj, "iscrowd": 0}
            )
    coco = {
        "info": {
            "description": f"gfldet synthetic shapes ({split})",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c, "name": n, "supercategory": "shape"} for c, n in zip(CATEGORY_IDS, CLASSES)
        ],
    }
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")))


def shapes_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where a shapes dataset in `out_dir` keeps its files (whether written yet or not):
    {"train_ann", "val_ann": COCO json files, "train_img_dir", "val_img_dir": image folders}."""
    out_dir = Path(out_dir)
    return {
        **{f"{s}_ann": out_dir / "annotations" / f"{s}.json" for s in SPLITS},
        **{f"{s}_img_dir": out_dir / s / "images" for s in SPLITS},
    }


def shapes_overrides(paths: dict[str, Path]) -> list[str]:
    """`--set` items that point a config's data.train and data.val at a dataset laid out as
    `paths` (what shapes_paths and write_shapes_dataset return)."""
    return [
        f"data.train.ann_file={paths['train_ann']}",
        f"data.train.img_dir={paths['train_img_dir']}",
        f"data.val.ann_file={paths['val_ann']}",
        f"data.val.img_dir={paths['val_img_dir']}",
    ]


def _is_cached(out_dir: Path, meta: dict[str, int]) -> bool:
    """True when ``out_dir`` holds a complete dataset generated with exactly ``meta``."""
    try:
        if json.loads((out_dir / "meta.json").read_text()) != meta:
            return False
    except (OSError, ValueError):
        return False
    paths = shapes_paths(out_dir)
    return all(
        paths[f"{s}_ann"].is_file()
        and all((paths[f"{s}_img_dir"] / f"{i:06d}.jpg").is_file() for i in range(meta[f"num_{s}"]))
        for s in SPLITS
    )


def _is_ours(out_dir: Path) -> bool:
    """Whether ``out_dir`` was written by this generator: its marker file, or the meta.json of
    gfldet versions before the marker."""
    if (out_dir / MARKER).is_file():
        return True
    try:
        return "generator_version" in json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


# Bounds of the generator's arguments (lowest, highest): above them a run would take hours of
# work or more memory than a machine has (one 200000-pixel image is 480 GB as float32), so they
# are refused before anything is written.
LIMITS: dict[str, tuple[int, int]] = {
    "num_train": (1, 1_000_000),
    "num_val": (1, 1_000_000),
    "img_size": (16, 8192),
    "min_size": (1, 8192),
    "max_size": (1, 8192),
    "max_objects": (1, 1000),
    "seed": (0, 2**63 - 1),
}


def check_arguments(args: dict[str, int]) -> None:
    """Raises ValueError naming the first argument out of range (by its parameter name)."""
    for name, (lo, hi) in LIMITS.items():
        value = args[name]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer, {lo} <= {name} <= {hi}, got {value!r}")
    if args["min_size"] > args["max_size"]:
        raise ValueError(
            f"min_size ({args['min_size']}) must not exceed max_size ({args['max_size']})"
        )


def write_shapes_dataset(
    out_dir: str | Path,
    num_train: int = 2000,
    num_val: int = 300,
    img_size: int = 256,
    seed: int = 0,
    min_size: int = 8,
    max_size: int = 160,
    max_objects: int = 8,
    *,
    workers: int | None = None,
) -> dict[str, Path]:
    """Write out_dir/{train,val}/images/*.jpg and out_dir/annotations/{train,val}.json.

    Returns paths ``{"train_ann", "train_img_dir", "val_ann", "val_img_dir"}``. Generation is
    skipped when ``out_dir/meta.json`` records the same arguments and the files are complete.
    ``workers`` (default: 2 for large sets, else 1) does not affect the output.

    ``out_dir`` must be new, empty, or an earlier output of this generator (marked by the file
    ``.gfldet-synth``): any other folder is refused with a ValueError, so no file the generator
    did not write is ever replaced or deleted.
    """
    out_dir = Path(out_dir)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "img_size": img_size,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "max_objects": max_objects,
    }
    check_arguments(meta)
    if _is_cached(out_dir, meta):
        return shapes_paths(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a folder: give a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_ours(out_dir):
        raise ValueError(
            f"{out_dir} is not empty and was not written by gfldet data synth (it has no "
            f"{MARKER} file); the generator does not write into it, so that none of its files "
            "is replaced: give a new or empty folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(
        "written by gfldet data synth: it may replace its own files here (see meta.json)\n"
    )
    (out_dir / "meta.json").unlink(missing_ok=True)  # never leave a stale meta on a crash
    if workers is None:
        workers = 1 if num_train + num_val < 256 else min(2, os.cpu_count() or 1)
    # spawn, not fork: forking a process whose torch/OpenMP threads hold locks can deadlock.
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) if workers > 1 else None
    try:
        for split_index, num in enumerate((num_train, num_val)):
            _write_split(out_dir, split_index, num, meta, pool)
    finally:
        if pool:
            pool.close()
            pool.join()
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return shapes_paths(out_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: generate (or reuse) the dataset and print a one-line summary."""
    p = argparse.ArgumentParser(
        prog="gfldet data synth", description="Generate the synthetic COCO-format shapes dataset."
    )
    p.add_argument("--out", default="data/shapes", help="output directory")
    names = ("num_train", "num_val", "img_size", "seed", "min_size", "max_size", "max_objects")
    for name, default in zip(names, write_shapes_dataset.__defaults__ or ()):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    p.add_argument("--workers", type=int, default=None, help="processes (default: auto)")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {a.workers}")
    try:
        check_arguments({n: getattr(a, n) for n in names})
    except ValueError as e:  # name the command-line flags
        msg = str(e)
        for n in names:
            msg = re.sub(rf"\b{n}\b", "--" + n.replace("_", "-"), msg)
        raise ValueError(f"data synth: {msg}") from None
    t0 = time.perf_counter()
    paths = write_shapes_dataset(a.out, *(getattr(a, n) for n in names), workers=a.workers)
    counts = []
    for split in SPLITS:
        coco = json.loads(paths[f"{split}_ann"].read_text())
        counts.append(f"{split} {len(coco['images'])} images/{len(coco['annotations'])} boxes")
    print(
        f"shapes dataset in {a.out}: {', '.join(counts)}, {len(CLASSES)} classes "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
