"""`gfldet data stats`: a dataset seen the way GFL will see it, before any training.

For a config's training split (and the val split's counts) it reports:

1. images, objects, objects per image and per class (crowd boxes excluded: they are not
   training targets), images without a usable box;
2. box sizes sqrt(w * h) in the pixels the model sees (the keep-ratio resize to
   `data.train.img_scale`), and COCO's small / medium / large split (area 32^2, 96^2 in original
   pixels, by each annotation's `area`, as COCO evaluation counts them);
3. the real ATSS assignment (`atss_assign` with the built model's strides, anchors and topk on
   every image's resized, padded size): positives and gts per pyramid level, gts without any
   positive;
4. GFL's own question: the edge distances (l, t, r, b) of every positive to its gt, in strides
   of its level, against the largest distance the general distribution can express,
   `reg_max * bin_width` strides (DFL clamps its targets just below, at
   `(reg_max - 0.1) * bin_width`). A share beyond it over 1 % gets a concrete suggestion: the
   `reg_max` that covers the 99th percentile, or one more pyramid level, whichever fits (the
   extra level is checked by running the assignment again with it).

compute.py computes it, report.py renders it for the terminal (`format_statistics`), plots.py
draws it, command.py writes the files (`dataset_statistics(cfg, out_dir)`: data_stats.json,
class_histogram.png, box_sizes.png, edge_distances.png) and is the command (`data_stats`).
"""

from .command import check_out_dir, data_stats, dataset_statistics
from .compute import compute_statistics
from .plots import plot_box_sizes, plot_class_histogram, plot_edge_distances
from .report import format_statistics

__all__ = [
    "check_out_dir",
    "compute_statistics",
    "data_stats",
    "dataset_statistics",
    "format_statistics",
    "plot_box_sizes",
    "plot_class_histogram",
    "plot_edge_distances",
]
