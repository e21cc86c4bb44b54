"""data: reading Sizes.data_images images' annotations as COCO json, Pascal VOC and YOLO into a
dataset, as `gfldet train` reads them (every check included), and the memory of a dataset of
Sizes.data_memory_images images."""

from __future__ import annotations

import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gfldet.data.coco import CocoDetection
from gfldet.data.loader import build_dataset
from gfldet.data.options import ValSplitOptions
from gfldet.data.transforms import TestTransform
from gfldet.data.voc import write_voc
from gfldet.data.yolo import write_yolo

from ..timing import measure, median
from . import Settings


def synthetic_coco(images: int, boxes: int = 7, size: tuple[int, int] = (640, 480)) -> dict:
    """A COCO dict of `images` images with `boxes` random boxes each, 80 classes."""
    rng = np.random.default_rng(0)
    w, h = size
    xy = rng.uniform(0, 0.8, (images * boxes, 2)) * [w, h]
    wh = rng.uniform(0.02, 0.2, (images * boxes, 2)) * [w, h]
    cats = rng.integers(1, 81, images * boxes)
    anns = [
        {
            "id": k + 1,
            "image_id": k // boxes + 1,
            "category_id": int(cats[k]),
            "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
            "area": float(wh[k, 0] * wh[k, 1]),
            "iscrowd": 0,
        }
        for k in range(images * boxes)
    ]
    return {
        "images": [
            {"id": i + 1, "file_name": f"{i:07d}.jpg", "width": w, "height": h}
            for i in range(images)
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)],
    }


def resident_mib() -> float:
    """This process's resident memory, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_formats(s: Settings, out: dict[str, Any], tmp: Path) -> None:
    """Each format read into a dataset, as `gfldet train` reads it; then the memory."""
    coco = synthetic_coco(s.sizes.data_images, size=(32, 24))  # tiny image files: YOLO reads them
    src = tmp / "images"
    src.mkdir()
    tiny = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))[1].tobytes()
    for im in coco["images"]:
        (src / im["file_name"]).write_bytes(tiny)
    (tmp / "coco.json").write_text(json.dumps(coco))
    voc_list = write_voc(coco, src, tmp / "voc", "train")
    yolo_yaml = write_yolo(coco, src, tmp / "yolo", "train")
    splits = {
        "coco": {"format": "coco", "ann_file": str(tmp / "coco.json"), "img_dir": str(src)},
        "voc": {"format": "voc", "ann_file": str(voc_list), "img_dir": str(tmp / "voc")},
        "yolo": {
            "format": "yolo",
            "ann_file": str(yolo_yaml),
            "img_dir": str(tmp / "yolo" / "images" / "train"),
        },
    }
    fns = {
        name: partial(build_dataset, ValSplitOptions(**split, img_scale=[1333, 800]), False)
        for name, split in splits.items()
    }
    times = measure(fns, s.repeats, s.warmup)
    m = {k: median(v) for k, v in times.items()}
    out["times"]["data"] = times
    out["medians"]["data"] = m
    out["data_read_s"] = max(m.values())
    out["data_images"] = s.sizes.data_images

    big = tmp / "big.json"
    big.write_text(json.dumps(synthetic_coco(s.sizes.data_memory_images)))
    before = resident_mib()
    dataset = CocoDetection(big, tmp, TestTransform((1333, 800)), train=True)
    out["data_memory_mib"] = resident_mib() - before
    out["data_memory_images"] = len(dataset)


def run(s: Settings, out: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        measure_formats(s, out, Path(tmp))


def report(out: dict[str, Any]) -> list[str]:
    m = out["medians"]["data"]
    return [
        f"\nreading {out['data_images']} images' annotations into a dataset (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in m.items())
        + f"; {out['data_memory_images']} images in memory: "
        f"{out['data_memory_mib']:.0f} MiB",
    ]
