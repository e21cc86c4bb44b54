"""The evaluation's plots: score reliability and precision-recall curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.plots import new_figure, save_png


def plot_reliability(scores: np.ndarray, ious: np.ndarray, q: dict, path: str | Path) -> Path:
    """Reliability plot of scores as localisation quality: mean IoU per score bin (bars, with
    the number of detections) over a scatter of every matched detection; a perfectly
    calibrated joint score lies on the diagonal. scores [M], ious [M] of the matched
    detections; q: their calibration (evaluator.quality_calibration). Writes a PNG."""
    num_bins = len(q["reliability"])
    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    if len(scores):
        # A random subset keeps the file small for COCO's ~10^5 matched detections.
        idx = np.random.default_rng(0).permutation(len(scores))[:5000]
        ax.scatter(
            np.asarray(scores)[idx],
            np.asarray(ious)[idx],
            s=3,
            alpha=0.25,
            c="0.5",
            linewidths=0,
            label="matched detections",
        )
    centers = [(b["score_lo"] + b["score_hi"]) / 2 for b in q["reliability"]]
    means = [b["mean_iou"] for b in q["reliability"]]
    ax.bar(
        centers,
        np.nan_to_num(means),
        width=0.9 / num_bins,
        color="tab:blue",
        alpha=0.6,
        edgecolor="tab:blue",
        label="mean IoU per score bin",
    )
    for c, m, b in zip(centers, means, q["reliability"]):
        if b["count"]:
            ax.annotate(str(b["count"]), (c, m), ha="center", va="bottom", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="score = IoU")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.05),
        xlabel="score",
        ylabel="IoU with matched gt",
        title=f"score vs IoU: Pearson {q['pearson']:.3f}, Spearman {q['spearman']:.3f}",
    )
    ax.title.set_fontsize(10)
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, path)


def plot_pr_curves(recall: np.ndarray, curves: dict[str, np.ndarray], path: str | Path) -> Path:
    """Precision-recall curves of a group of classes at IoU 0.50 and 0.75 (two panels).

    recall [R]: COCOeval's recall thresholds; curves: class name -> precision [T, R] (COCOeval
    eval["precision"][:, :, k, area all, maxDets 100]; T = the 10 IoU thresholds .50:.05:.95,
    -1 where undefined). Classes without gt are listed as such. Writes a PNG.
    """
    from matplotlib import colormaps

    fig = new_figure(10, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, t, iou in ((axes[0], 0, "0.50"), (axes[1], 5, "0.75")):
        for k, (name, p) in enumerate(curves.items()):
            color = colormaps["tab10"](k % 10)
            prec = p[min(t, len(p) - 1)]
            if (prec < 0).all():
                ax.plot([], [], color=color, label=f"{name} (no gt)")
                continue
            ap = float(prec[prec > -1].mean())
            ax.plot(
                recall,
                np.where(prec < 0, np.nan, prec),
                color=color,
                lw=1.5,
                label=f"{name} (AP{iou[2:]} {ap:.3f})",
            )
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", title=f"IoU = {iou}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
    axes[0].set_ylabel("precision")
    return save_png(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], score_thr: float, iou_thr: float, path: str | Path
) -> Path:
    """The detection confusion matrix (evaluation.confusion) as a heat map: rows the true class,
    columns the predicted one, background last; each row colored by its share of the row's
    total (where that true class's boxes went), with the counts written in the cells when
    there are at most 30 classes. Writes a PNG."""
    names = [*class_names, "background"]
    n = len(names)
    counts = np.asarray(matrix, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shares[-1, -1] = np.nan  # background-background is not defined
    side = max(4.5, (0.32 if n <= 31 else 0.18) * n + 2.5)  # inches; numbers need room
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
    fontsize = 8 if n <= 15 else 6
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set(xlabel="prediction", ylabel="ground truth")
    ax.set_title(f"confusion at IoU {iou_thr:g}, score >= {score_thr:g}", fontsize=10)
    if n <= 31:
        for t in range(n):
            for p in range(n):
                if (t, p) == (n - 1, n - 1) or not counts[t, p]:
                    continue
                dark = shares[t, p] > 0.5
                color = "white" if dark else "black"
                ax.text(
                    p,
                    t,
                    str(int(counts[t, p])),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color=color,
                )
    return save_png(fig, path)
