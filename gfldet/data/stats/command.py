"""`gfldet data stats` as one call: the statistics computed, written into an output folder
(data_stats.json and the three plots) and summarised for the terminal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...core.files import make_output_dir, write_json_atomic
from .compute import check_arguments, compute_statistics
from .plots import plot_box_sizes, plot_class_histogram, plot_edge_distances
from .report import format_statistics


def check_out_dir(cfg: Any, out_dir: Path) -> None:
    """Creates the output folder, or raises a one-line error: when it cannot be created or
    written, and when it is (or lies below) the image folder of data.train or data.val, where
    the PNG plots would land among the split's images (a YOLO split, or an `infer` glob,
    searches that folder and would take them for images). Nothing is created then."""
    for split in ("train", "val"):
        img_dir = getattr(cfg.data, split).img_dir
        if img_dir and Path(out_dir).resolve().is_relative_to(Path(img_dir).resolve()):
            raise ValueError(
                f"--out {out_dir} is inside data.{split}.img_dir ({img_dir}): the plots would "
                "land among the split's images; choose a folder outside it"
            )
    make_output_dir(out_dir, "--out")


def dataset_statistics(
    cfg: Any, out_dir: str | Path | None, max_images: int | None = None, split: str = "train"
) -> dict[str, Any]:
    """Statistics of a config's dataset split as GFL will train on it (see
    gfldet.data.stats.compute.compute_statistics for the arguments and the result, which
    also gets "seconds"); with `out_dir` (checked by `check_out_dir` first), also writes
    `data_stats.json` and the plots `class_histogram.png`, `box_sizes.png` and
    `edge_distances.png` there."""
    t0 = time.perf_counter()
    out = None if out_dir is None else Path(out_dir)
    check_arguments(max_images, split)
    if out is not None:
        check_out_dir(cfg, out)
    stats = compute_statistics(cfg, max_images, split)
    if out is not None:
        plot_class_histogram(stats, out / "class_histogram.png")
        plot_box_sizes(stats, out / "box_sizes.png")
        plot_edge_distances(stats, out / "edge_distances.png")
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        write_json_atomic(stats, out / "data_stats.json", indent=1)
    return stats


def data_stats(cfg: Any, out_dir: str | Path | None = None, max_images: int | None = None) -> str:
    """What `gfldet data stats` does: the training split's statistics (written into
    `out_dir` when given) and the text it prints."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    stats = dataset_statistics(cfg, out_dir, max_images)
    text = format_statistics(stats)
    if out_dir is not None:
        out = Path(out_dir)
        text += f"\nwrote {out / 'data_stats.json'} and the plots in {out}"
    return text
