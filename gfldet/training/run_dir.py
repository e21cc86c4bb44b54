"""A training run's folder (WORK_DIR): what it holds, and never mixing two runs in it.

A new run (no --resume) starts only in a folder that holds no run: checkpoints, logs and
metrics of two runs side by side would be mixed up (curves of both, an old epoch_12.pth beside
a new epoch_3.pth, keep_last deleting the wrong files). `--overwrite` moves the old run's files
into WORK_DIR/previous/<time>/ first; nothing is ever deleted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# What a run writes into its folder.
RUN_FILES = (
    "config.yaml", "latest.pth", "log.jsonl", "train.log", "metrics.json", "detections.json",
    "per_class.csv", "calibration.png", "curves.png", "results.csv",
)  # fmt: skip
RUN_PATTERNS = ("epoch_*.pth", "pr_curves_*.png")
PREVIOUS = "previous"


def run_files(work_dir: Path) -> list[Path]:
    """The files of a run in `work_dir` (empty when it holds none or does not exist)."""
    if not work_dir.is_dir():
        return []
    found = [work_dir / n for n in RUN_FILES if (work_dir / n).is_file()]
    for pattern in RUN_PATTERNS:
        found += sorted(work_dir.glob(pattern))
    tb = work_dir / "tensorboard"
    return found + ([tb] if tb.is_dir() else [])


def check_work_dir(work_dir: Path) -> None:
    """Raises NotADirectoryError when `work_dir` exists and is not a folder."""
    if work_dir.exists() and not work_dir.is_dir():
        raise NotADirectoryError(
            f"work_dir {work_dir} is a file, not a folder: choose another --work-dir"
        )


def new_run_problem(work_dir: Path) -> str | None:
    """Why a new run may not start in `work_dir` (it holds a run), or None."""
    files = run_files(work_dir)
    if not files:
        return None
    names = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
    return (
        f"work_dir {work_dir} already holds a training run ({names}): continue it with "
        f"'gfldet train --config {work_dir / 'config.yaml'} --resume', start the new run in an "
        "empty --work-dir, or add --overwrite to move the old run's files into "
        f"{work_dir / PREVIOUS}/<time>/ first"
    )


def move_run_aside(work_dir: Path) -> Path:
    """Moves the run's files into WORK_DIR/previous/<YYYYmmdd-HHMMSS>/ (renames, no copies);
    returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = work_dir / PREVIOUS / stamp, 1
    while dest.exists():
        n += 1
        dest = work_dir / PREVIOUS / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for p in run_files(work_dir):
        os.replace(p, dest / p.name)
    return dest
