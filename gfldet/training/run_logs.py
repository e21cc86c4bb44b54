"""The logs people already use, beside log.jsonl: results.csv (one row per epoch) and
TensorBoard (losses, learning rate, evaluation metrics and a few val images with boxes).

log.jsonl stays the run's record (a resume drops its lines after the checkpoint);
results.csv is rebuilt from it after every epoch, so the two never disagree.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_open

VAL_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def parse_record(line: str) -> dict[str, Any] | None:
    """One line of log.jsonl as a record, or None when it is not one.

    A record is a JSON object with "iter" (and "epoch", when it has one) an integer >= 0 (an
    integral float such as 3.0 is read as 3; inf, NaN, text or 1e400 are not records), and
    "val" / "epoch_mean", when present, objects; a "val" record names its "epoch". Lines cut
    short by a kill, or edited by hand, are thereby told apart from the trainer's records.
    """
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(rec, dict):
        return None
    for key in ("iter", "epoch"):
        if key not in rec and key == "epoch":
            continue
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if not math.isfinite(v) or v != int(v) or v < 0:
            return None
        rec[key] = int(v)
    if any(k in rec and not isinstance(rec[k], dict) for k in ("val", "epoch_mean")):
        return None
    if "val" in rec and "epoch" not in rec:
        return None
    return rec


def write_results_csv(work_dir: Path) -> Path:
    """WORK_DIR/results.csv from WORK_DIR/log.jsonl: per epoch its iterations, last learning
    rate, the mean of every loss term over the epoch's steps, and the val metrics of the
    evaluation after it (empty when there was none). Lines that are not records (see
    parse_record) are left out."""
    epochs: dict[int, dict[str, Any]] = {}
    for line in (work_dir / "log.jsonl").read_text().splitlines():
        rec = parse_record(line)
        if rec is None or "epoch" not in rec:
            continue
        row = epochs.setdefault(rec["epoch"], {"epoch": rec["epoch"]})
        if "epoch_mean" in rec:
            means = {k: v for k, v in rec["epoch_mean"].items() if k.startswith("loss")}
            row.update(iter=rec["iter"], lr=rec.get("lr"), **means)
        elif "val" in rec:
            row.update({k: rec["val"].get(k) for k in VAL_KEYS})
    losses = sorted({k for r in epochs.values() for k in r if k.startswith("loss")})
    columns = ["epoch", "iter", "lr", *losses, *VAL_KEYS]
    path = work_dir / "results.csv"
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for epoch in sorted(epochs):
            r = epochs[epoch]
            writer.writerow(["" if _empty(r.get(c)) else r[c] for c in columns])
    return path


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class TensorBoard:
    """train.tensorboard: scalars and images under WORK_DIR/tensorboard (rank 0 only).

    Needs the optional `tensorboard` package; without it the constructor raises ImportError
    with what to install, before training starts.
    """

    def __init__(self, work_dir: Path) -> None:
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(work_dir / "tensorboard"))

    @staticmethod
    def check_available() -> None:
        """Raises ImportError saying what to install when tensorboard is missing."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ImportError(
                "train.tensorboard: true needs the tensorboard package: pip install tensorboard "
                "(or pip install 'gfldet[tensorboard]'), or set train.tensorboard: false"
            ) from None

    def step(self, it: int, lr: float, losses: dict[str, float]) -> None:
        self.writer.add_scalar("train/lr", lr, it)
        self.writer.add_scalar("train/loss", sum(losses.values()), it)
        for k, v in losses.items():
            self.writer.add_scalar(f"train/{k}", v, it)

    def evaluation(self, it: int, metrics: dict, images: list[np.ndarray]) -> None:
        """Val AP metrics, the score-IoU correlations, and images (RGB uint8 [H, W, 3]) with
        their detections drawn."""
        for k in VAL_KEYS:
            v = metrics.get(k)
            if not _empty(v):
                self.writer.add_scalar(f"val/{k}", v, it)
        for k in ("pearson", "spearman"):
            v = metrics.get("quality", {}).get(k)
            if not _empty(v):
                self.writer.add_scalar(f"val/quality_{k}", v, it)
        for i, img in enumerate(images):
            self.writer.add_image(f"val/image_{i}", img, it, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
