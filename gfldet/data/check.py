"""`gfldet data check`: every check that training and evaluation make of their data, run ahead
of time on both splits, with every problem listed instead of the first one stopping the run."""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from .coco import BadImageError, CocoDetection
from .loader import build_dataset
from .voc import CHECK_ERROR

log = logging.getLogger("gfldet")


class _Collect(logging.Handler):
    """Keeps what a dataset logs while it is built: every problem it skipped (the readers log
    each one at DEBUG level, and a summary with counts as a warning), and the warnings marked
    CHECK_ERROR (training runs, but its result would mean nothing)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, CHECK_ERROR, False):
            self.errors.append(record.getMessage())
        elif record.levelno >= logging.WARNING:
            self.warnings.append(record.getMessage())
        elif record.levelno == logging.DEBUG:
            self.problems.append(record.getMessage())


def _build(split_cfg: dict, train: bool, skip_bad: bool, classes: list[str] | None) -> Any:
    """(dataset or None, the problems it skipped, the error that stopped it or None, the
    warnings that data check counts as errors)."""
    handler = _Collect()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        dataset, error = build_dataset(split_cfg, train, skip_bad, classes), None
    except (OSError, ValueError) as e:
        dataset, error = None, str(e)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    # Each problem once; the summaries only for what has no line of its own (e.g. a count).
    return dataset, handler.problems or handler.warnings, error, handler.errors


def _read_images(dataset: CocoDetection, workers: int, name: str) -> list[str]:
    """Decodes every image as training would (OpenCV releases the GIL: threads run in
    parallel); returns the problems."""

    def read(img_id: int) -> str | None:
        try:
            dataset.read_image(img_id)
        except BadImageError as e:
            return str(e)
        return None

    # A missing file was reported by the build already (build_dataset's missing_images check,
    # one line each): reading it would report it a second time.
    missing = set(dataset.missing_images())
    ids = [
        i
        for i in dataset.img_ids
        if dataset.img_dir / dataset.coco.imgs[i]["file_name"] not in missing
    ]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = pool.map(read, ids)
        bar = tqdm(found, total=len(ids), desc=f"reading {name} images", leave=False)
        return [p for p in bar if p is not None]


def check_data(cfg: Any, read_images: bool = True, workers: int = 2) -> dict:
    """Checks both splits of `cfg.data` as `gfldet train` and `gfldet eval` would.

    First with the config's `data.skip_bad_images`: a problem that stops training is an error.
    When that fails, again with skipping on, so that the problems after the first are found
    too (all errors, each listed once). Then (read_images) every image is decoded. Returns
    {"ok": bool, "splits": {name: {"format", "ann_file", "images", "objects", "classes",
    "errors": [...], "skipped": [...]}}};
    `ok` is False when training or evaluation would stop on something.
    """
    d = cfg.data
    skip = d.skip_bad_images
    report: dict[str, Any] = {"ok": True, "splits": {}}
    classes = d.classes
    for name, train in (("train", True), ("val", False)):
        split = getattr(d, name)
        dataset, warnings, error, meaningless = _build(split, train, skip, classes)
        errors = [error] if error else []
        if dataset is None and not skip:  # look past the first problem
            dataset, problems, error, meaningless = _build(split, train, True, classes)
            # Without skipping, each of these stops training: they are the errors, one line
            # each. The first error was one of them (or their summary): not listed again.
            errors, warnings = problems or errors, []
            if error and error not in errors:
                errors.append(error)
        errors += [m for m in meaningless if m not in errors]
        entry: dict[str, Any] = {
            "format": split.format,
            "ann_file": split.ann_file,
            "errors": errors,
            "skipped": warnings,
        }
        if dataset is not None:
            if name == "train":
                classes = dataset.class_names  # the val split must have the same (VOC: takes them)
                report["cat_ids"] = list(dataset.cat_ids)
            elif list(dataset.cat_ids) != report.get("cat_ids"):
                errors.append(f"{split.ann_file}: categories differ from {d.train.ann_file}")
            objects = Counter(
                dataset.class_names[int(label)]
                for img in dataset.img_ids
                for label in dataset._targets[img][1]
            )
            entry.update(images=len(dataset), objects=sum(objects.values()), classes=dict(objects))
            if read_images:
                bad = _read_images(dataset, workers, name)
                (entry["skipped"] if skip else errors).extend(bad)
        if errors or (entry["skipped"] and not skip):
            report["ok"] = False
        report["splits"][name] = entry
    return report


def format_check(report: dict, limit: int = 10) -> str:
    """The report as text: per split its size and every problem (the first `limit` of each
    kind), then the verdict."""
    lines = []
    for name, e in report["splits"].items():
        size = (
            f"{e['images']} images, {e['objects']} objects, {len(e['classes'])} classes"
            if "images" in e
            else "not readable"
        )
        lines.append(f"{name} ({e['format']}, {e['ann_file']}): {size}")
        for kind in ("errors", "skipped"):
            for msg in e[kind][:limit]:
                lines.append(f"  {'error' if kind == 'errors' else 'skipped'}: {msg}")
            if len(e[kind]) > limit:
                lines.append(f"  ... and {len(e[kind]) - limit} more")
    verdict = (
        "OK: training and evaluation can read this data"
        if report["ok"]
        else ("PROBLEMS: training or evaluation would stop on the errors above")
    )
    return "\n".join([*lines, verdict])
