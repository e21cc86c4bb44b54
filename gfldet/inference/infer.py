"""`gfldet infer` on image files: detections drawn into copies of the images, and
predictions.json. (Videos and image sequences: gfldet.inference.video.)"""

from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from ..core.draw import draw_detections
from ..core.records import prediction_record, write_predictions_json
from ..data.coco import IMAGE_EXTENSIONS, BadImageError, load_image
from .predictor import Predictor

log = logging.getLogger("gfldet")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


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


def infer_images(
    predictor: Predictor,
    files: list[Path],
    out_dir: Path,
    score_thr: float = 0.3,
    show_uncertainty: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Detects objects in `files`, writes OUT_DIR/<stem>.jpg (boxes drawn) for each and
    OUT_DIR/predictions.json (a record per image, see records.prediction_record).

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
            det = predictor([rgb])[0]
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
