"""coco: COCO evaluation (pycocotools, through gfldet's evaluator) of the shapes val set with
Sizes.coco_dets_per_image synthetic detections per image, the load of a trained model's
output."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np

from gfldet.data.loader import build_dataset
from gfldet.evaluation.evaluator import coco_evaluate

from ..models import shapes_config
from ..timing import measure, median
from . import Settings


def synthetic_detections(ds: Any, per_image: int, seed: int = 0) -> list[dict]:
    """COCO results for every image of `ds`: each gt jittered (score 0.3..1, right class), the
    rest up to `per_image` random boxes of random classes (score 0..0.3) - the load of a
    trained model's output at test.max_per_img."""
    rng = np.random.default_rng(seed)
    results = []
    for img_id in ds.img_ids:
        info = ds.coco.imgs[img_id]
        wh = np.array([info["width"], info["height"]], dtype=np.float64)
        anns = ds.coco.imgToAnns[img_id][:per_image]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]
            box = [float(v) for v in np.array([x, y, w, h]) + jitter]
            score = float(rng.uniform(0.3, 1.0))
            results.append(
                {"image_id": img_id, "category_id": ann["category_id"], "bbox": box, "score": score}
            )
        for _ in range(per_image - len(anns)):
            xy = rng.uniform(0, 0.8, 2) * wh
            size = rng.uniform(0.05, 0.5, 2) * wh
            category = int(rng.choice(ds.cat_ids))
            box = [*map(float, xy), *map(float, size)]
            score = float(rng.uniform(0.0, 0.3))
            results.append(
                {"image_id": img_id, "category_id": category, "bbox": box, "score": score}
            )
    return results


def run(s: Settings, out: dict[str, Any]) -> None:
    ds = build_dataset(shapes_config(s.data).data.val, train=False)
    results = synthetic_detections(ds, s.sizes.coco_dets_per_image)
    metrics: dict = {}

    def evaluate() -> None:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names, ids = ds.class_names, ds.cat_ids
            metrics.update(coco_evaluate(ds.coco, results, names, ids, None, plots=False))

    times = measure({"coco_evaluate": evaluate}, s.repeats, s.warmup)
    out["times"]["coco"] = times
    out["medians"]["coco"] = {k: median(v) for k, v in times.items()}
    out["coco_eval_s"] = median(times["coco_evaluate"])
    out["coco_eval_images"] = len(ds.img_ids)
    out["coco_eval_detections"] = len(results)
    out["coco_eval_AP_of_synthetic_detections"] = metrics.get("AP")


def report(out: dict[str, Any]) -> list[str]:
    return [
        f"\nCOCO evaluation, shapes val ({out['coco_eval_images']} images, "
        f"{out['coco_eval_detections']} detections): {out['coco_eval_s']:.2f} s",
    ]
