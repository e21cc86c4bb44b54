"""`gfldet infer` on image files: detections drawn into copies of the images, and
predictions.json. (Videos and image sequences: gfldet.engine.video.)"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from ..data.coco import BadImageError, load_image
from ..data.transforms import rescale_size
from .predictor import Predictor
from .uncertainty import edge_uncertainty
from .visualize import draw_detections, prediction_record, write_predictions_json

log = logging.getLogger("gfldet")


def detect_with_uncertainty(predictor: Predictor, rgb) -> dict:
    """The predictor's detections on one RGB image [H, W, 3], with `edge_std` / `edge_top2`
    [K, 4] (in original-image pixels, as the boxes) when the model has edge distributions."""
    det = predictor([rgb])[0]
    if "dists" in det:
        scale = rescale_size(rgb.shape[1], rgb.shape[0], predictor.transform.img_scale)
        det.update(
            edge_uncertainty(det["dists"], det["strides"], predictor.model.bin_width, scale[2:])
        )
    return det


def infer_images(
    predictor: Predictor,
    files: list[Path],
    out_dir: Path,
    score_thr: float = 0.3,
    show_uncertainty: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Detects objects in `files`, writes OUT_DIR/<stem>.jpg (boxes drawn) for each and
    OUT_DIR/predictions.json (a record per image, see visualize.prediction_record).

    predictions.json is always written for the images processed, also when an unreadable image
    stops the run (skip_bad False: the BadImageError is re-raised afterwards) or Ctrl-C does;
    with skip_bad, unreadable images are skipped with a warning and counted.
    Returns {"images", "skipped", "detections"}.
    """
    records, used, skipped = [], set(), 0
    try:
        for path in tqdm(files, desc="infer", file=sys.stdout, dynamic_ncols=True):
            try:
                rgb = load_image(path)
            except BadImageError as e:
                if not skip_bad:
                    raise
                log.warning("skipped an unreadable image (data.skip_bad_images): %s", e)
                skipped += 1
                continue
            det = detect_with_uncertainty(predictor, rgb)
            records.append(
                prediction_record(path, rgb.shape, det, predictor.cat_ids,
                                  predictor.class_names, score_thr)
            )  # fmt: skip
            drawn = draw_detections(
                rgb[:, :, ::-1], det["boxes"], det["scores"], det["labels"],
                predictor.class_names, score_thr,
                edge_std=det.get("edge_std") if show_uncertainty else None,
            )  # fmt: skip
            name = path.stem
            while name in used:  # same file name in two folders
                name += "_"
            used.add(name)
            if not cv2.imwrite(str(out_dir / f"{name}.jpg"), drawn):
                raise OSError(f"could not write {out_dir / f'{name}.jpg'}")
    finally:
        write_predictions_json(records, out_dir / "predictions.json")
    n = sum(len(r["detections"]) for r in records)
    return {"images": len(records), "skipped": skipped, "detections": n}
