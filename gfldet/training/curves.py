"""Training curves: WORK_DIR/log.jsonl -> WORK_DIR/curves.png (loss terms, lr, val AP)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..core.plots import new_figure, save_png
from .run_logs import parse_record

_SHOW_LINES = 10  # line numbers named in the warning about unreadable lines


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The trainer's log.jsonl -> (train records by iteration, val records by epoch).

    Train records hold "iter", "epoch", "lr", "loss" and the loss terms "loss_*"; val records
    hold "epoch", "iter" and "val" {AP, AP50, ...}. After a resume from an earlier checkpoint
    the log repeats iterations: the last record of each iteration (and epoch) wins. Lines that
    are not records (see run_logs.parse_record: cut by a crash, or e.g. "iter": 1e400) are
    skipped with one warning that gives their numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    bad = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = parse_record(line)
        if rec is None:
            bad.append(n)
        elif "val" in rec:
            val[rec["epoch"]] = rec
        elif "loss" in rec:
            train[rec["iter"]] = rec
    if bad:
        shown = ", ".join(map(str, bad[:_SHOW_LINES])) + (", ..." if len(bad) > _SHOW_LINES else "")
        warnings.warn(
            f"{path}: skipped {len(bad)} unreadable line(s): {shown} (each line must be a JSON "
            "object with an integer 'iter')",
            stacklevel=2,
        )
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def _series(records: list[dict], key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    pts = [(x, y) for x, y in pts if math.isfinite(y)]
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def write_training_curves(work_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plots WORK_DIR/log.jsonl into WORK_DIR/curves.png (or `out`) and returns its path.

    Panels: every loss term and the total vs iteration (log scale), the learning rate vs
    iteration, and val AP / AP50 / AP75 vs epoch. The PNG is replaced atomically, so it can be
    rewritten after every evaluation while someone looks at it.
    """
    work_dir = Path(work_dir)
    train, val = read_log(work_dir / "log.jsonl")
    if not train and not val:
        raise ValueError(f"{work_dir / 'log.jsonl'}: no training or validation records")
    out = Path(out) if out is not None else work_dir / "curves.png"

    fig = new_figure(13, 4)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3, width_ratios=[2.2, 1, 1.4])
    keys = sorted({k for r in train for k in r if k.startswith("loss_")})
    for key in ["loss", *keys]:
        x, y = _series(train, key, "iter")
        if len(x):
            ax_loss.plot(
                x,
                y,
                lw=2 if key == "loss" else 1.2,
                color="k" if key == "loss" else None,
                label="total" if key == "loss" else key.removeprefix("loss_"),
            )
    if any(ln.get_ydata().min() > 0 for ln in ax_loss.get_lines()):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="iteration", ylabel="loss", title="training losses")
    ax_loss.grid(alpha=0.3, which="both")
    if ax_loss.get_lines():
        ax_loss.legend(fontsize=8)

    x, y = _series(train, "lr", "iter")
    ax_lr.plot(x, y, color="tab:gray")
    ax_lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)

    flat = [{"epoch": r["epoch"], **r["val"]} for r in val]
    for key, style in (("AP", "o-"), ("AP50", "s--"), ("AP75", "^:")):
        x, y = _series(flat, key, "epoch")
        if len(x):
            ax_val.plot(x, y, style, label=key)
    if flat:
        ax_val.set_xlim(0.5, max(r["epoch"] for r in flat) + 0.5)
        last = flat[-1].get("AP")
        title = f"val (last AP {last:.3f})" if isinstance(last, (int, float)) else "val"
        ax_val.legend(fontsize=8)
    else:
        title = "val (no evaluation yet)"
    ax_val.set(xlabel="epoch", ylabel="COCO AP", title=title)
    ax_val.grid(alpha=0.3)
    ax_val.xaxis.get_major_locator().set_params(integer=True)

    return save_png(fig, out)
