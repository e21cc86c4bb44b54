"""The checkpoints of a training run: latest.pth, epoch_N.pth, best.pth, and what a resume
reads back.

`Checkpointer` writes them (atomically, on rank 0, with the RNG states of every rank),
links latest.pth (and best.pth) to the file just written instead of writing it twice, prunes
old epoch files (train.keep_last), and turns a full disk into a message that names the last
good checkpoint and the command that resumes. `BestAP` follows the best val AP of the run,
which decides best.pth and early stopping (train.patience).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..core import dist as gdist
from ..core.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from .run_dir import RunDir

log = logging.getLogger("gfldet")

# state(rng) -> the checkpoint's dict, given every rank's RNG states (indexed by rank).
StateFn = Callable[[list[dict]], dict[str, Any]]


class Checkpointer:
    """Saves and finds the checkpoints of the run in `run_dir`.

    Every rank holds one and calls `save` / `save_best` together (the RNG states of all ranks
    are gathered into the checkpoint); rank 0 writes. `last` is the last good checkpoint (named
    in error messages), `saved_iter` the iteration that WORK_DIR/latest.pth holds when this run
    wrote it.
    """

    def __init__(self, run_dir: RunDir, device: torch.device, keep_last: int = 0) -> None:
        self.run_dir, self.device, self.keep_last = run_dir, device, keep_last
        self.last: Path | None = None
        self.saved_iter: int | None = None

    @staticmethod
    def find(resume: bool | str | Path, run_dir: RunDir) -> Path | None:
        """The checkpoint `--resume` names: None (a new run), WORK_DIR/latest.pth (True), or
        the given path. FileNotFoundError (one line, saying what to do) when it is missing."""
        if not resume:
            return None
        path = run_dir.latest if resume is True else Path(resume)
        if not path.is_file():
            raise FileNotFoundError(
                f"no checkpoint to resume from: {path}; name one with --resume PATH (e.g. "
                "an epoch_N.pth of the run), or start a new run without --resume in an "
                "empty --work-dir"
            )
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """The checkpoint at `path` (see core.checkpoint.load_checkpoint); it becomes `last`."""
        state = load_checkpoint(path)
        self.last = path
        return state

    def save(
        self,
        state: StateFn,
        iteration: int,
        epoch_file: str | None = None,
        epoch: int | None = None,
    ) -> None:
        """Writes WORK_DIR/latest.pth, or WORK_DIR/`epoch_file` (e.g. "epoch_3.pth", after
        `epoch` epochs) with latest.pth linked to it and old epoch files pruned.

        A full disk raises OSError (ENOSPC / EDQUOT) naming the last good checkpoint, which
        stays intact, and the command that resumes.
        """
        rng = gdist.all_gather_object(rng_state(self.device))
        latest = self.run_dir.latest
        last_good, self.last, self.saved_iter = self.last, latest, iteration
        if not gdist.is_main():
            return
        try:
            if epoch_file:
                save_checkpoint(state(rng), self.run_dir.path / epoch_file)
                link_checkpoint(self.run_dir.path / epoch_file, latest)
                for p in prune_checkpoints(self.run_dir.path, self.keep_last, up_to=epoch):
                    log.info("removed %s (train.keep_last: %d)", p, self.keep_last)
            else:
                save_checkpoint(state(rng), latest)
        except OSError as e:
            self.last = last_good
            raise self._disk_full(e, last_good) from None

    def save_best(self, state: StateFn, iteration: int) -> Path:
        """WORK_DIR/best.pth: a link to latest.pth when that holds this iteration, else written
        (every rank calls it, as `save`). Returns its path."""
        best = self.run_dir.best
        if self.saved_iter == iteration:
            if gdist.is_main():
                link_checkpoint(self.run_dir.latest, best)
            return best
        rng = gdist.all_gather_object(rng_state(self.device))
        if gdist.is_main():
            try:
                save_checkpoint(state(rng), best)
            except OSError as e:
                raise self._disk_full(e, self.last) from None
        return best

    def _disk_full(self, e: OSError, last_good: Path | None) -> OSError:
        """A full disk: the message that says what is kept and how to go on; other errors as
        they are."""
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return e
        kept = (
            f"the last good checkpoint {last_good} is intact"
            if last_good
            else ("no checkpoint of this run was written yet")
        )
        return OSError(
            e.errno,
            f"no space left on the device of {self.run_dir.path} while saving a checkpoint; "
            f"{kept}. Free some space, then resume with: {self.run_dir.resume_command()}",
        )


@dataclasses.dataclass
class BestAP:
    """The best val AP of the run so far, and the evaluations since (train.patience).

    A checkpoint stores it as a dict ("best"). The evaluation that follows a checkpoint's save
    is not in it: `replay` adds it from log.jsonl on resume (`evaluated_iter` is the iteration
    of the last evaluation counted).
    """

    ap: float | None = None
    epoch: int | None = None
    iter: int | None = None
    stale: int = 0  # evaluations since the best one (all of them while there is none)
    evaluated_iter: int = -1

    def update(self, ap: float | None, epoch: int, iteration: int) -> bool:
        """Counts an evaluation; True when its AP (a finite number) beats the best so far."""
        self.evaluated_iter = iteration
        if isinstance(ap, (int, float)) and math.isfinite(ap) and (self.ap is None or ap > self.ap):
            self.ap, self.epoch, self.iter, self.stale = float(ap), epoch, iteration, 0
            return True
        self.stale += 1
        return False

    def exhausted(self, patience: int) -> bool:
        """Whether `patience` evaluations (> 0) in a row brought no better AP."""
        return patience > 0 and self.stale >= patience

    def replay(self, records: Iterable[dict[str, Any]], up_to: int) -> None:
        """Counts the val records of log.jsonl that came after `evaluated_iter`, up to the
        iteration `up_to` (the checkpoint's), in order."""
        for rec in records:
            if "val" in rec and self.evaluated_iter < rec["iter"] <= up_to:
                self.update(rec["val"].get("AP"), rec["epoch"], rec["iter"])

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: Any) -> BestAP:
        """From a checkpoint's "best" entry; a fresh one when it has none (or an unreadable
        one: the record is informative, never worth stopping a resume for)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(state, dict) or not set(state) <= names:
            return cls()
        try:
            return cls(**state)
        except TypeError:
            return cls()

    def describe(self) -> str:
        """E.g. "best val AP 0.412 at epoch 9 (best.pth)"."""
        if self.ap is None:
            return "no val AP yet"
        return f"best val AP {self.ap:.4f} at epoch {self.epoch} (best.pth)"
