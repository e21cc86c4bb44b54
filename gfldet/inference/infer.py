"""`gfldet infer` on image files: detections drawn into copies of the images, and
predictions.json. (Videos and image sequences: gfldet.inference.video.)"""

from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from ..core.draw import DRAW_SCORE_THR, draw_detections, write_jpeg
from ..core.records import prediction_record, write_predictions_json
from ..data.coco import IMAGE_EXTENSIONS, BadImageError, load_image
from .predictor import Predictor

log = logging.getLogger("gfldet")

JPEG_QUALITY = 95  # of the drawn copies (OpenCV's default)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_at(path: Path, exclude: Path | None) -> list[Path]:
    if path.is_dir():
        found = (p for p in path.rglob("*") if _is_image(p))
        return sorted(p for p in found if exclude is None or not is_within(p, exclude))
    return [path] if _is_image(path) else []


def is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (after resolving links and '..')."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def input_in_out_dir_error(inp: str, out_dir: Path) -> ValueError:
    """The error for an input named on the command line that lies in the output folder."""
    path = Path(inp)
    parent = path if path.is_dir() else path.parent
    return ValueError(
        f"--out-dir {out_dir} holds the input {inp}: annotated copies would overwrite "
        "the inputs or be read back as inputs next time; choose an --out-dir outside "
        f"the inputs (e.g. {parent}/predicted)"
    )


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
            if exclude is not None and is_within(path, exclude):
                raise input_in_out_dir_error(inp, exclude)
            matches = _images_at(path, exclude)
        else:
            hits = sorted(glob.glob(inp, recursive=True))
            matches = [m for hit in hits for m in _images_at(Path(hit), exclude)]
            if exclude is not None:
                matches = [m for m in matches if not is_within(m, exclude)]
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


def image_output_names(files: list[Path]) -> list[str]:
    """The file name each image's drawn copy gets in the output folder: ``<stem>.jpg``, with
    ``_`` appended to the stem while another input already took the name."""
    names, used = [], set()
    for path in files:
        name = path.stem
        while name in used:  # same file name in two folders
            name += "_"
        used.add(name)
        names.append(f"{name}.jpg")
    return names


def infer_images(
    predictor: Predictor,
    files: list[Path],
    out_dir: Path,
    score_thr: float = DRAW_SCORE_THR,
    show_uncertainty: bool = False,
    skip_bad: bool = False,
) -> dict:
    """Detects objects in `files`, writes OUT_DIR/<stem>.jpg (boxes drawn; names as
    image_output_names gives them) for each and OUT_DIR/predictions.json (a record per image,
    see records.prediction_record). Each file is written whole under a temporary name, then
    renamed: a file or link already there is replaced, never written into.

    predictions.json is always written for the images processed, also when an unreadable image
    stops the run (skip_bad False: the BadImageError is re-raised afterwards) or Ctrl-C does;
    with skip_bad, unreadable images are skipped with a warning and counted.
    Returns {"images", "skipped", "detections"}.
    """
    records, skipped = [], 0
    names = image_output_names(files)
    try:
        for path, name in zip(
            tqdm(files, desc="infer", file=sys.stdout, dynamic_ncols=True), names, strict=True
        ):
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
                prediction_record(
                    path, rgb.shape, det, predictor.cat_ids, predictor.class_names, score_thr
                )
            )
            edge_std = det.get("edge_std") if show_uncertainty else None
            drawn = draw_detections(
                rgb[:, :, ::-1],
                det["boxes"],
                det["scores"],
                det["labels"],
                predictor.class_names,
                score_thr,
                edge_std=edge_std,
            )
            write_jpeg(drawn, out_dir / name, quality=JPEG_QUALITY)
    finally:
        write_predictions_json(records, out_dir / "predictions.json")
    n = sum(len(r["detections"]) for r in records)
    return {"images": len(records), "skipped": skipped, "detections": n}
