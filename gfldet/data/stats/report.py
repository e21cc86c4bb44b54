"""The terminal summary of `gfldet data stats`: `format_statistics(stats)` renders what
gfldet.data.stats.compute returns, the suggestion last (the line a user acts on)."""

from __future__ import annotations

import textwrap
from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _table(rows: list[list[str]], header: list[str], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def _counts_rows(splits: list[dict]) -> list[str]:
    """A table of the splits' counts; a split that could not be read gets its error."""
    rows, errors = [], []
    for c in splits:
        if "error" in c:
            errors.append(f"  {c['split']}: not read: {c['error']}")
            continue
        opi = c["objects_per_image"]
        row = [c["split"], str(c["images"]), str(c["images_without_boxes"]), str(c["objects"])]
        row += [f"{opi['mean']:.2f}", str(opi["max"]), str(c["crowd"])]
        rows.append([*row, str(c["boxes_dropped"] + c["boxes_invalid"])])
    header = ["split", "images", "no usable box", "objects", "per image", "max", "crowd", "dropped"]
    return (_table(rows, header) if rows else []) + errors


def format_statistics(stats: dict[str, Any], max_classes: int = 20) -> str:
    """A terminal summary of `dataset_statistics`: counts, classes, sizes, the per-level ATSS
    table with the edge distances, and the suggestion last. With more than `max_classes`
    classes only the most and the least frequent ones are listed."""
    lines = [
        *_counts_block(stats),
        "",
        *_classes_block(stats["counts"], max_classes),
        "",
        *_sizes_block(stats),
        "",
        *_levels_block(stats),
        "",
        *_edges_block(stats),
        "",
    ]
    lines += [_wrap(f"warning: {w}") for w in stats["warnings"]]
    lines += [_wrap(f"note: {n}") for n in stats["notes"]]
    lines.append(_wrap(f"suggestion: {stats['suggestion']}"))
    return "\n".join(lines)


def _counts_block(stats: dict[str, Any]) -> list[str]:
    """Both splits' counts and the analysed split's COCO size classes."""
    c, o = stats["counts"], stats["other_split"]
    lines = [f"dataset: {c['ann_file']} ({c['split']}), {o.get('ann_file', '-')} ({o['split']})"]
    lines += _counts_rows([c, o])
    lines.append(
        "  objects: usable boxes, crowd excluded; images without a usable box are "
        + ("left out of training" if c["split"] == "train" else "kept")
    )
    ca = c["coco_area"]
    n_area = max(sum(ca.values()), 1)
    lines.append(
        f"  COCO sizes (area in original pixels): small {_pct(ca['small'] / n_area)}, "
        f"medium {_pct(ca['medium'] / n_area)}, large {_pct(ca['large'] / n_area)}"
    )
    return lines


def _classes_block(c: dict[str, Any], max_classes: int) -> list[str]:
    """Objects and images per class, most objects first (the middle elided past max_classes)."""
    classes = sorted(c["classes"], key=lambda r: -r["objects"])
    total = max(c["objects"], 1)
    rows = [
        [r["name"], str(r["objects"]), _pct(r["objects"] / total), str(r["images"])]
        for r in classes
    ]
    if len(rows) > max_classes:
        half = max_classes // 2
        rows = [*rows[:half], [f"... {len(rows) - 2 * half} more", "", "", ""], *rows[-half:]]
    header = ["class", "objects", "share", "images"]
    return [f"classes ({len(classes)}), most objects first:", *_table(rows, header)]


def _sizes_block(stats: dict[str, Any]) -> list[str]:
    s = stats["sizes"]
    p = s["percentiles"]
    return [
        f"box sizes sqrt(w*h) in pixels the model sees ({stats['scale']['note']}):",
        "  " + "  ".join(f"{k} {_num(v)}" for k, v in p.items()) + f"  max {_num(s['max'])}",
    ]


def _levels_block(stats: dict[str, Any]) -> list[str]:
    """The ATSS table: per level its positives, gts, their size, and edge distances; then the
    gts without a positive."""
    geo, smp, e = stats["model"], stats["sample"], stats["edges"]
    sample = f"{smp['images']} images" + (
        f" (seeded sample of {smp['of']})" if smp["seed"] is not None else ""
    )
    lines = [
        f"ATSS assignment on {sample}: topk {geo['topk']}, anchors {geo['anchor_scale']:g} x "
        f"stride, {smp['gts']} gts, {smp['positives']} positives",
    ]
    general = "limit" in e
    legend = (
        "(gts: by the level of most of their positives, with their median size in px; "
        "p50 p99 max: edge distances in strides"
        + (f"; > {e['limit']:g}: beyond reg_max x bin_width)" if general else ")")
    )
    lines.append(textwrap.fill(legend, 100, initial_indent="  ", subsequent_indent="   "))
    header = ["level", "stride", "anchor", "positives", "gts", "size", "pos/gt"]
    header += ["p50", "p99", "max"]  # edge distances
    if general:
        header.append(f"> {e['limit']:g}")
    rows = []
    for lv in stats["levels"]:
        ep = lv["edge_percentiles"]
        row = [lv["level"], str(lv["stride"]), f"{lv['anchor_side']:g}"]
        row += [f"{lv['positives']} ({_pct(lv['positive_share'])})"]
        row += [f"{lv['gts']} ({_pct(lv['gt_share'])})", _num(lv["gt_size"]["median"])]
        row += [_num(lv["positives_per_gt"])]
        row += [_num(ep[k], ".2f") for k in ("p50", "p99", "max")]
        if general:
            row.append(f"{100 * lv['beyond_share']:.2f} %" if lv["edges"] else "-")
        rows.append(row)
    lines += _table(rows, header)
    u = stats["unassigned"]
    line = f"  no positive: {u['gts']} gts ({_pct(u['share'])})"
    if u["gts"]:
        line += f", median size {u['median_size']:.1f} px, largest {u['max_size']:.1f} px"
    lines.append(line)
    if u["gts"]:
        lines.append(
            f"    {u['lost_to_overlaps']} lost their locations to overlapping gts, "
            f"{u['none_alone']} get none even alone"
        )
    return lines


def _edges_block(stats: dict[str, Any]) -> list[str]:
    """Edge-distance percentiles, and for box 'general' the share beyond its range."""
    geo, e = stats["model"], stats["edges"]
    lines = [
        "edge distances (l, t, r, b of each positive, in strides): "
        + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in e["percentiles"].items()),
    ]
    if "limit" in e:
        lines += [
            f"  box 'general': reg_max {geo['reg_max']} x bin_width {geo['bin_width']:g} = "
            f"{e['limit']:g} strides",
            f"  beyond it: {e['beyond']} of {e['count']} ({100 * e['beyond_share']:.2f} %); "
            f"over DFL's target clamp {e['dfl_clamp']:g}: {100 * e['clamped_share']:.2f} %",
        ]
    return lines


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False)
