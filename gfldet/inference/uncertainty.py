"""Localisation uncertainty from GFL's edge distributions (the paper's Fig. 3).

Each detection has, per edge (left, top, right, bottom), a discrete distribution over the bins
y_i = i·Δ (i = 0..n) in units of its pyramid level's stride. A sharp distribution means a
confidently placed edge; a flat or two-peaked one means an ambiguous edge (occlusion, blur,
a shadow). Two summaries per edge:

- edge_std: the standard deviation of the edge position, in pixels
  (sqrt(Σ P_i y_i² − (Σ P_i y_i)²) · Δ · stride);
- edge_top2: the probability mass of the two most likely bins, in [2/(n+1), 1]. DFL trains
  the mass onto the two bins around the true edge, so a confident edge has edge_top2 near 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def edge_uncertainty(
    dists: Tensor,
    strides: Tensor,
    bin_width: float = 1.0,
    scale: Sequence[float] | Tensor | None = None,
) -> dict[str, Tensor]:
    """Summarises edge distributions.

    dists [K, 4, n+1]: softmax probabilities per edge (left, top, right, bottom) over the bins
    i·bin_width, in strides; strides [K]: the stride of each detection's level, in network input
    pixels; scale: optional (w_scale, h_scale) [2] of the resize from the original image to the
    network input, to report pixels of the original image (left/right divided by w_scale,
    top/bottom by h_scale).
    Returns {"edge_std": [K, 4] pixels, "edge_top2": [K, 4]}.
    """
    if dists.dim() != 3 or dists.shape[1] != 4:
        raise ValueError(f"dists must be [K, 4, n+1], got {list(dists.shape)}")
    if strides.shape != dists.shape[:1]:
        raise ValueError(f"strides must be [K] = [{dists.shape[0]}], got {list(strides.shape)}")
    p = dists.float()
    bins = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device) * bin_width
    mean = (p * bins).sum(-1)
    var = ((p * bins.square()).sum(-1) - mean.square()).clamp(min=0)  # rounding can go < 0
    std = var.sqrt() * strides.to(p)[:, None]
    if scale is not None:
        sx, sy = (float(v) for v in scale)
        std = std / std.new_tensor([sx, sy, sx, sy])
    top2 = p.topk(min(2, p.shape[-1]), dim=-1).values.sum(-1)
    return {"edge_std": std, "edge_top2": top2}
