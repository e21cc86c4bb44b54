"""A training run's folder (WORK_DIR): what it holds, and never mixing two runs in it.

A new run (no --resume) starts only in a folder that holds no run: checkpoints, logs and
metrics of two runs side by side would be mixed up (curves of both, an old epoch_12.pth beside
a new epoch_3.pth, keep_last deleting the wrong files). `--overwrite` moves the old run's files
into WORK_DIR/previous/<time>/ first; nothing is ever deleted. A run folder is never inside an
image folder of the data: its pictures (curves.png, train_batch*.jpg) would be read as images.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..core import dist as gdist
from ..core.files import atomic_open, write_yaml_atomic
from ..core.runtime import setup_logging, start_log_file
from .run_logs import parse_record

# What a run writes into its folder.
RUN_FILES = (
    "config.yaml",
    "latest.pth",
    "best.pth",
    "log.jsonl",
    "train.log",
    "curves.png",
    "results.csv",
    "metrics.json",
    "detections.json",
    "per_class.csv",
    "calibration.png",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "eval_manifest.json",
)
RUN_PATTERNS = ("epoch_*.pth", "pr_curves_*.png", "train_batch*.jpg")
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


def check_outside(work_dir: Path, folders: Mapping[str, str | Path | None]) -> None:
    """Raises ValueError when `work_dir` is one of `folders` ({config key: folder}, e.g. the
    image folders of the data splits) or lies inside one."""
    work = _absolute(work_dir)
    for key, folder in folders.items():
        if folder is None:
            continue
        inside = _absolute(Path(folder))
        if work == inside or inside in work.parents:
            raise ValueError(
                f"work_dir {work_dir} is inside {key} {folder}: the run's pictures "
                "(curves.png, train_batch*.jpg, ...) would be read as images of the split; "
                "choose a --work-dir outside the dataset's image folders"
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


def _absolute(path: Path) -> Path:
    """`path` made absolute with its existing part resolved (links included); the rest, which
    may not exist yet, appended as it is."""
    path = Path(os.path.abspath(path))
    for parent in (path, *path.parents):
        if parent.exists():
            return parent.resolve() / path.relative_to(parent)
    return path


class RunDir:
    """WORK_DIR of a training run: the rules of `claim`, its files, and its log.jsonl.

    Under torchrun every rank holds one; rank 0 writes (config.yaml, log.jsonl, the moving
    aside) and every rank reads the answers it needs through collectives.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.moved_to: Path | None = None  # where --overwrite moved the previous run's files

    latest = property(lambda self: self.path / "latest.pth", doc="WORK_DIR/latest.pth")
    best = property(lambda self: self.path / "best.pth", doc="WORK_DIR/best.pth")
    config_file = property(lambda self: self.path / "config.yaml", doc="WORK_DIR/config.yaml")
    log_file = property(lambda self: self.path / "log.jsonl", doc="WORK_DIR/log.jsonl")

    def check(self, image_dirs: Mapping[str, str | Path | None]) -> None:
        """Raises before anything is written when the folder cannot hold a run: a file, or
        inside one of `image_dirs` ({config key: folder})."""
        check_work_dir(self.path)
        check_outside(self.path, image_dirs)

    def claim(self, new_run: bool, overwrite: bool) -> None:
        """Makes the folder ready for the run (every rank calls it).

        A new run needs a folder without a run in it (rank 0's view decides for all): else
        FileExistsError, or with `overwrite` the old run's files are moved aside (see
        `moved_to` and `moved`). Creates the folder; PermissionError (one line) when it cannot
        be created or written. Starts the console log; train.log starts with `start_log`.
        """
        problem = new_run_problem(self.path) if new_run else None
        problem = gdist.all_gather_object(problem)[0]
        if problem and not overwrite:
            raise FileExistsError(problem)
        moved = move_run_aside(self.path) if problem and gdist.is_main() else None
        self.moved_to = gdist.all_gather_object(moved)[0]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # one clear line, as the CLI's out dirs
            raise PermissionError(f"cannot create work_dir {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise PermissionError(f"work_dir is not writable: {self.path}")
        # Records are kept in memory until the run is known to be valid (start_log).
        setup_logging(self.path)

    def moved(self, path: str | Path) -> Path | None:
        """Where `path`, a file of the previous run, is after `claim` moved it aside; None when
        it was not one of the moved files."""
        if self.moved_to is None:
            return None
        path = _absolute(Path(path))
        if path.parent == _absolute(self.path) and path.name in {
            p.name for p in run_files(self.moved_to)
        }:
            return self.moved_to / path.name
        return None

    def start_log(self, config: dict[str, Any]) -> None:
        """Writes config.yaml (the resolved config: what resumes the run) and starts train.log
        with the records kept since `claim`."""
        if gdist.is_main():
            write_yaml_atomic(config, self.config_file)
        start_log_file(self.path)

    def append(self, record: dict[str, Any]) -> None:
        """Appends one record to log.jsonl (rank 0)."""
        if gdist.is_main():
            with open(self.log_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> Iterator[dict[str, Any]]:
        """The readable records of log.jsonl, in order (none when there is no log)."""
        for _, rec in self._lines():
            yield rec

    def truncate_log(self, last_iter: int) -> None:
        """Drops the log.jsonl records after iteration `last_iter` (a resumed run trains those
        iterations again), and unreadable lines (e.g. one cut short by a kill)."""
        if not gdist.is_main() or not self.log_file.is_file():
            return
        keep = [line for line, rec in self._lines() if rec["iter"] <= last_iter]
        with atomic_open(self.log_file) as f:
            f.write("".join(line + "\n" for line in keep))

    def _lines(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.log_file.is_file():
            return
        for line in self.log_file.read_text().splitlines():
            rec = parse_record(line)
            if rec is not None:
                yield line, rec

    def resume_command(self) -> str:
        """The command that continues this run from WORK_DIR/latest.pth."""
        cfg = shlex.quote(str(self.config_file))
        ws, local = gdist.world_size(), gdist.local_world_size()
        if ws == 1:
            return f"gfldet train --config {cfg} --resume"
        launch = f"torchrun --nproc_per_node={local}"
        if ws > local:
            launch += f" --nnodes={ws // local} [same rendezvous flags as before, on every node]"
        return f"{launch} -m gfldet train --config {cfg} --resume"
