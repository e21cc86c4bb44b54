"""The plots of `gfldet data stats --out`: objects per class, box sizes against the anchor sides
of each pyramid level, and the edge distances against the general distribution's range. Each
takes what gfldet.data.stats.compute returns and writes one PNG with gfldet.core.plots' figures
(no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...core.plots import new_figure, save_png


def plot_class_histogram(stats: dict[str, Any], path: str | Path) -> Path:
    """Horizontal bars: objects per class (most first), with their counts. Writes a PNG."""
    c = stats["counts"]
    classes = sorted(c["classes"], key=lambda r: -r["objects"])
    fig = new_figure(7, max(2.5, 0.22 * len(classes) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    counts = [r["objects"] for r in classes]
    ax.barh(y, counts, color="tab:blue")
    for yi, n in zip(y, counts):
        ax.annotate(
            str(n), (n, yi), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7
        )
    ax.set_yticks(y, [r["name"] for r in classes], fontsize=7 if len(classes) > 30 else 9)
    ax.invert_yaxis()
    ax.set(
        xlabel="objects (crowd excluded)",
        title=f"{stats['split']}: {c['objects']} objects in {c['images']} images",
    )
    ax.margins(x=0.12)
    return save_png(fig, Path(path))


def plot_box_sizes(stats: dict[str, Any], path: str | Path) -> Path:
    """Box sizes sqrt(w * h) in resized pixels, log scale: all gts of the split (left), and the
    analysed ones by the level ATSS gives most of their positives (right). Both mark the
    anchor sides (dashed: a gt of that size matches the level's anchor best) and the geometric
    means between them (dotted: about where ATSS moves gts to the next level). Writes a PNG."""
    from matplotlib import colormaps

    s, geo, names = stats["sizes"], stats["model"], stats["level_names"]
    edges = np.array(s["bin_edges"][1:])  # from 1 px; the < 1 px bin is drawn at 1 px
    centers = np.sqrt(edges[:-1] * edges[1:])
    widths = np.diff(edges)

    def hist(counts: list[int]) -> np.ndarray:
        c = np.asarray(counts[1:-1], dtype=np.float64)
        c[0] += counts[0]  # sizes < 1 px into the first bin
        return c

    fig = new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    ax1.bar(centers, hist(s["histogram"]), width=widths, color="0.55", align="center")
    ax1.set(
        title=f"{stats['split']}: {s['count']} gts, {stats['scale']['note'][:60]}", ylabel="gts"
    )
    bottom = np.zeros(len(centers))
    for k, name in enumerate([*names, "none"]):
        h = hist(s["by_level_histogram"][name])
        color = colormaps["tab10"](k % 10) if name != "none" else "black"
        label = f"{name} (stride {geo['strides'][k]})" if name != "none" else "no positive"
        ax2.bar(centers, h, width=widths, bottom=bottom, color=color, label=label)
        bottom += h
    smp = stats["sample"]
    ax2.set(title=f"main ATSS level of {smp['gts']} gts ({smp['images']} images)")
    ax2.legend(fontsize=7, loc="upper right")
    sides = geo["anchor_sides"]
    right = max(s["max"] or 1.0, sides[-1]) * 1.5
    side_label = {
        "xycoords": ("data", "axes fraction"),
        "rotation": 90,
        "va": "top",
        "ha": "right",
        "fontsize": 7,
        "color": "tab:red",
    }
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlim(1, right)
        ax.set_xlabel("sqrt(w * h), resized pixels")
        for k, a in enumerate(sides):
            ax.axvline(a, color="tab:red", ls="--", lw=0.8)
            ax.annotate(f"{names[k]} {a:g}", (a, 1), **side_label)
        for a, b in zip(sides, sides[1:]):
            ax.axvline(math.sqrt(a * b), color="tab:red", ls=":", lw=0.8)
    return save_png(fig, Path(path))


def plot_edge_distances(stats: dict[str, Any], path: str | Path) -> Path:
    """Histograms of the positives' edge distances in strides, one line per level (log
    counts), with the reg_max * bin_width limit and DFL's clamp for box 'general'. Writes a
    PNG."""
    from matplotlib import colormaps

    e, geo = stats["edges"], stats["model"]
    fig = new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    top = 1.0
    for k, lv in enumerate(stats["levels"]):
        h = np.asarray(lv["edge_histogram"], dtype=np.float64)
        if not h.sum():
            continue
        x = np.arange(len(h) + 1) * e["histogram_bin"]
        label = f"{lv['level']} ({lv['edges']} edges)"
        ax.stairs(h, x, color=colormaps["tab10"](k % 10), lw=1.3, label=label)
        top = max(top, x[-1])
    if "limit" in e:
        label = f"reg_max x bin_width = {e['limit']:g} ({100 * e['beyond_share']:.2f} % beyond)"
        ax.axvline(e["limit"], color="tab:red", lw=1.5, label=label)
        ax.axvline(e["dfl_clamp"], color="tab:red", ls=":", lw=1, label="DFL target clamp")
        top = max(top, e["limit"] * 1.1)
        title = f"edge distances vs the general distribution (box '{geo['box']}')"
    else:
        title = f"edge distances (box '{geo['box']}': no distribution limit)"
    ax.set_yscale("log")
    ax.set(
        xlim=(0, top),
        xlabel="edge distance (l, t, r, b) in strides of the level",
        ylabel="edges",
        title=title,
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    return save_png(fig, Path(path))
